"""Trust work: who owns an upload session (quotas per token), and per-version summaries computed at publish time.

Revision ID: 0002
Revises: 0001
"""

from alembic import op  # noqa: F401
import sqlalchemy as sa  # noqa: F401


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # -- upload sessions: owner and quotas --
    pass
    # -- manifests: per-version summaries --
    pass


def downgrade() -> None:
    # -- manifests: per-version summaries --
    pass
    # -- upload sessions: owner and quotas --
    pass
