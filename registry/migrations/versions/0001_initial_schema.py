"""Initial schema: repositories, blobs, manifests (with the search index), versions, tokens, upload sessions.

Revision ID: 0001
Revises: (none)
"""

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('blobs',
    sa.Column('digest', sa.String(length=71), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('digest', name=op.f('pk_blobs'))
    )
    op.create_table('repositories',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('namespace', sa.String(length=255), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_repositories')),
    sa.UniqueConstraint('name', name=op.f('uq_repositories_name'))
    )
    op.create_index(op.f('ix_repositories_namespace'), 'repositories', ['namespace'])
    op.create_index(op.f('ix_repositories_updated_at'), 'repositories', ['updated_at'])

    op.create_table('tokens',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('scope', sa.String(length=16), nullable=False),
    sa.Column('namespace', sa.String(length=255), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('revoked_at', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tokens')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_tokens_token_hash'))
    )
    op.create_table('upload_sessions',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('repository', sa.String(length=255), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('driver_state', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('expires_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_upload_sessions'))
    )
    op.create_index(op.f('ix_upload_sessions_expires_at'), 'upload_sessions', ['expires_at'])

    op.create_table('manifests',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('repository_id', sa.Integer(), nullable=False),
    sa.Column('digest', sa.String(length=71), nullable=False),
    sa.Column('media_type', sa.String(length=255), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('content', sa.LargeBinary(), nullable=False),
    sa.Column('config_digest', sa.String(length=71), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('deleted_at', sa.DateTime(), nullable=True),
    sa.Column('pushed_by', sa.String(length=255), nullable=True),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('license', sa.String(length=200), nullable=True),
    sa.Column('base_id', sa.String(length=255), nullable=False),
    sa.Column('base_revision', sa.String(length=255), nullable=True),
    sa.Column('base_commit', sa.String(length=255), nullable=True),
    sa.Column('base_fingerprint', sa.String(length=71), nullable=False),
    sa.Column('base_architecture', sa.String(length=71), nullable=False),
    sa.Column('model_type', sa.String(length=100), nullable=True),
    sa.Column('post_id', sa.String(length=255), nullable=False),
    sa.Column('post_revision', sa.String(length=255), nullable=True),
    sa.Column('post_fingerprint', sa.String(length=71), nullable=False),
    sa.Column('codec', sa.String(length=100), nullable=False),
    sa.Column('tensors', sa.Integer(), nullable=False),
    sa.Column('post_parameters', sa.BigInteger(), nullable=False),
    sa.Column('stored_bytes', sa.BigInteger(), nullable=False),
    sa.Column('artifact_created_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['repository_id'], ['repositories.id'], name=op.f('fk_manifests_repository_id_repositories'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_manifests')),
    sa.UniqueConstraint('repository_id', 'digest', name='uq_manifests_repository_digest')
    )
    op.create_index(op.f('ix_manifests_base_architecture'), 'manifests', ['base_architecture'])
    op.create_index(op.f('ix_manifests_base_fingerprint'), 'manifests', ['base_fingerprint'])
    op.create_index(op.f('ix_manifests_base_id'), 'manifests', ['base_id'])
    op.create_index(op.f('ix_manifests_digest'), 'manifests', ['digest'])
    op.create_index(op.f('ix_manifests_model_type'), 'manifests', ['model_type'])
    op.create_index(op.f('ix_manifests_repository_id'), 'manifests', ['repository_id'])

    op.create_table('repository_blobs',
    sa.Column('repository_id', sa.Integer(), nullable=False),
    sa.Column('digest', sa.String(length=71), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['digest'], ['blobs.digest'], name=op.f('fk_repository_blobs_digest_blobs')),
    sa.ForeignKeyConstraint(['repository_id'], ['repositories.id'], name=op.f('fk_repository_blobs_repository_id_repositories'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('repository_id', 'digest', name=op.f('pk_repository_blobs'))
    )
    op.create_index(op.f('ix_repository_blobs_digest'), 'repository_blobs', ['digest'])

    op.create_table('manifest_blobs',
    sa.Column('manifest_id', sa.Integer(), nullable=False),
    sa.Column('digest', sa.String(length=71), nullable=False),
    sa.ForeignKeyConstraint(['manifest_id'], ['manifests.id'], name=op.f('fk_manifest_blobs_manifest_id_manifests'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('manifest_id', 'digest', name=op.f('pk_manifest_blobs'))
    )
    op.create_index(op.f('ix_manifest_blobs_digest'), 'manifest_blobs', ['digest'])

    op.create_table('versions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('repository_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('manifest_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('deleted_at', sa.DateTime(), nullable=True),
    sa.Column('pushed_by', sa.String(length=255), nullable=True),
    sa.ForeignKeyConstraint(['manifest_id'], ['manifests.id'], name=op.f('fk_versions_manifest_id_manifests'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['repository_id'], ['repositories.id'], name=op.f('fk_versions_repository_id_repositories'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_versions')),
    sa.UniqueConstraint('repository_id', 'name', name='uq_versions_repository_name')
    )
    op.create_index(op.f('ix_versions_manifest_id'), 'versions', ['manifest_id'])
    op.create_index('ix_versions_repository_live', 'versions', ['repository_id', 'deleted_at'])



def downgrade() -> None:
    op.drop_index('ix_versions_repository_live', table_name='versions')
    op.drop_index(op.f('ix_versions_manifest_id'), table_name='versions')

    op.drop_table('versions')
    op.drop_index(op.f('ix_manifest_blobs_digest'), table_name='manifest_blobs')

    op.drop_table('manifest_blobs')
    op.drop_index(op.f('ix_repository_blobs_digest'), table_name='repository_blobs')

    op.drop_table('repository_blobs')
    op.drop_index(op.f('ix_manifests_repository_id'), table_name='manifests')
    op.drop_index(op.f('ix_manifests_model_type'), table_name='manifests')
    op.drop_index(op.f('ix_manifests_digest'), table_name='manifests')
    op.drop_index(op.f('ix_manifests_base_id'), table_name='manifests')
    op.drop_index(op.f('ix_manifests_base_fingerprint'), table_name='manifests')
    op.drop_index(op.f('ix_manifests_base_architecture'), table_name='manifests')

    op.drop_table('manifests')
    op.drop_index(op.f('ix_upload_sessions_expires_at'), table_name='upload_sessions')

    op.drop_table('upload_sessions')
    op.drop_table('tokens')
    op.drop_index(op.f('ix_repositories_updated_at'), table_name='repositories')
    op.drop_index(op.f('ix_repositories_namespace'), table_name='repositories')

    op.drop_table('repositories')
    op.drop_table('blobs')
