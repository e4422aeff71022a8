"""Alembic environment: runs on the connection Database.migrate() passes in, or on
PARAMDELTA_DATABASE_URL when invoked as ``alembic -x`` from the command line."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from registry.db.models import Base

config = context.config


def _run(connection) -> None:  # noqa: ANN001
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    from registry.settings import Settings

    engine = create_engine(Settings().resolved_database_url())
    with engine.begin() as conn:
        _run(conn)
