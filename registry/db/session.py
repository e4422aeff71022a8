"""The metadata database: one engine per process, chosen by a SQLAlchemy URL.

SQLite (the embedded default) gets WAL mode, foreign keys and a busy timeout so
concurrent requests wait for the write lock instead of failing. A PostgreSQL URL
without a driver (postgresql://, postgres://, as libpq and most hosts write it) uses
the installed one, psycopg2 or psycopg 3; other URLs are used as given. The schema is
brought to the newest Alembic revision on open.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
SQLITE_BUSY_SECONDS = 30
MIGRATION_LOCK = 0x70617261_6D64  # a PostgreSQL advisory lock key ("paramd")
POSTGRES_DRIVERS = ("psycopg2", "psycopg")  # SQLAlchemy's dialect suffix is the module's name for both


class Database:
    """An engine and a session factory; ``with db.session() as s:`` commits on success."""

    def __init__(self, url: str, *, migrate: bool = True):
        self.url = database_url(url)
        self.engine = _create_engine(self.url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        if migrate:
            self.migrate()

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A session in a transaction: committed when the block succeeds, rolled back otherwise."""
        with self._sessions() as s, s.begin():
            yield s

    def migrate(self) -> None:
        """Upgrade the schema to the newest Alembic revision (creates it on an empty database)."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":  # replicas starting together: one migrates, the others wait
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        # A migration may switch SQLite's foreign keys off on its connection (registry/migrations/versions/0003):
        # no connection it used serves requests.
        self.engine.dispose()

    def dispose(self) -> None:
        self.engine.dispose()


def database_url(url: str) -> URL:
    """The URL with a PostgreSQL driver filled in when it names none; ValueError (one line) for a URL SQLAlchemy
    cannot read or a PostgreSQL URL when no driver is installed."""
    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - SQLAlchemy raises ArgumentError and ValueError; the URL may hold a password
        raise ValueError("PARAMDELTA_DATABASE_URL is not a database URL (e.g. postgresql://user@host/db)") from None
    if parsed.drivername == "postgres":  # Heroku's and libpq's spelling
        parsed = parsed.set(drivername="postgresql")
    if parsed.drivername != "postgresql":
        return parsed
    for driver in POSTGRES_DRIVERS:
        try:
            importlib.import_module(driver)  # the engine imports it anyway; a broken install counts as absent
        except ImportError:
            continue
        return parsed.set(drivername=f"postgresql+{driver}")
    raise ValueError("PARAMDELTA_DATABASE_URL names PostgreSQL but no driver is installed: "
                     "pip install 'paramdelta[scale]' (psycopg2-binary) or psycopg")


def _create_engine(parsed: URL) -> Engine:
    url = parsed
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_SECONDS})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    return engine
