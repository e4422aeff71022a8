"""OCI content: any manifest or index (not only deltas), sha512 digests, and the subject relation (referrers).

Digest columns grow to 135 characters ("sha512:" + 128 hex). A manifest's delta columns become nullable
(an image, an index or a signature has none); ``is_delta`` says which rows search lists, ``artifact_type``
and ``subject_digest`` are what the referrers API answers from.

SQLite alters a table by copying it. With foreign keys on, dropping the old copy of ``manifests`` would
cascade into ``versions`` and ``manifest_blobs``: they are switched off while this revision runs (the
connection is not in a transaction yet when an existing database is upgraded; on a new database the tables
are empty). Database.migrate opens fresh connections afterwards, which have them on again.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

OLD, NEW = sa.String(length=71), sa.String(length=135)
DIGEST_COLUMNS = {  # referencing tables before the one they reference (the downgrade deletes in this order)
    'repository_blobs': ('digest',),
    'manifest_blobs': ('digest',),
    'manifests': ('digest', 'config_digest', 'base_fingerprint', 'base_architecture', 'post_fingerprint'),
    'blobs': ('digest',),
}
# The delta columns a manifest that is not a delta leaves empty (their type, for the alteration).
DELTA_COLUMNS = {
    'config_digest': NEW, 'base_id': sa.String(length=255), 'base_fingerprint': NEW, 'base_architecture': NEW,
    'post_id': sa.String(length=255), 'post_fingerprint': NEW, 'codec': sa.String(length=100),
    'tensors': sa.Integer(), 'post_parameters': sa.BigInteger(), 'stored_bytes': sa.BigInteger(),
}


def _foreign_keys(on: bool) -> None:
    if op.get_bind().dialect.name == 'sqlite':
        op.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")


def upgrade() -> None:
    _foreign_keys(False)
    for table, columns in DIGEST_COLUMNS.items():
        with op.batch_alter_table(table) as batch:
            for column in columns:
                batch.alter_column(column, existing_type=OLD, type_=NEW)
    with op.batch_alter_table('manifests') as batch:
        for column, type_ in DELTA_COLUMNS.items():
            batch.alter_column(column, existing_type=type_, nullable=True)
        batch.add_column(sa.Column('is_delta', sa.Boolean(), server_default=sa.true(), nullable=False))
        batch.add_column(sa.Column('artifact_type', sa.String(length=255), nullable=True))
        batch.add_column(sa.Column('subject_digest', NEW, nullable=True))
        batch.create_index(batch.f('ix_manifests_subject_digest'), ['subject_digest'])
    _foreign_keys(True)


def downgrade() -> None:
    # Content that is not a delta, and sha512 digests, have no place in the older schema: they go first.
    op.execute("DELETE FROM manifests WHERE is_delta = false")
    for table, columns in DIGEST_COLUMNS.items():
        op.execute(f"DELETE FROM {table} WHERE length({columns[0]}) > 71")
    _foreign_keys(False)
    with op.batch_alter_table('manifests') as batch:
        batch.drop_index(batch.f('ix_manifests_subject_digest'))
        for column in ('subject_digest', 'artifact_type', 'is_delta'):
            batch.drop_column(column)
        for column, type_ in DELTA_COLUMNS.items():
            batch.alter_column(column, existing_type=type_, nullable=False)
    for table, columns in DIGEST_COLUMNS.items():
        with op.batch_alter_table(table) as batch:
            for column in columns:
                batch.alter_column(column, existing_type=NEW, type_=OLD)
    _foreign_keys(True)
