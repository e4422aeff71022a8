"""Trust work: who owns an upload session (quotas per token), and per-version summaries computed at publish time.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # -- upload sessions: owner and quotas --
    op.add_column('upload_sessions', sa.Column('owner_token_id', sa.Integer(), nullable=True))
    op.add_column('upload_sessions', sa.Column('lease', sa.String(length=255), nullable=True))
    op.add_column('upload_sessions', sa.Column('lease_expires_at', sa.DateTime(), nullable=True))
    op.add_column('upload_sessions', sa.Column('reserved', sa.BigInteger(), server_default='0', nullable=False))
    op.create_index(op.f('ix_upload_sessions_owner_token_id'), 'upload_sessions', ['owner_token_id'])
    # -- manifests: per-version summaries --
    op.add_column('manifests', sa.Column('summary', sa.Text(), nullable=True))
    op.create_table('manifest_tensors',
    sa.Column('manifest_id', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('dtype', sa.String(length=16), nullable=True),
    sa.Column('shape', sa.Text(), nullable=True),
    sa.Column('stored_bytes', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['manifest_id'], ['manifests.id'], name=op.f('fk_manifest_tensors_manifest_id_manifests'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('manifest_id', 'position', name=op.f('pk_manifest_tensors'))
    )


def downgrade() -> None:
    # -- manifests: per-version summaries --
    op.drop_table('manifest_tensors')
    with op.batch_alter_table('manifests') as batch:
        batch.drop_column('summary')
    # -- upload sessions: owner and quotas --
    op.drop_index(op.f('ix_upload_sessions_owner_token_id'), table_name='upload_sessions')
    with op.batch_alter_table('upload_sessions') as batch:
        for column in ('reserved', 'lease_expires_at', 'lease', 'owner_token_id'):
            batch.drop_column(column)
