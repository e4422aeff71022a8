"""Upgrading a registry database to the OCI-content schema (migration 0003) keeps every published delta: SQLite
alters tables by copying them, and with foreign keys on, dropping the old ``manifests`` would cascade into
``versions`` and ``manifest_blobs``."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text

from registry.db import Database
from registry.db.session import MIGRATIONS

DIGEST = "sha256:" + "ab" * 32
CONFIG = "sha256:" + "cd" * 32


def _at_revision(url: str, revision: str) -> None:
    db = Database(url, migrate=False)  # the registry's own engine: WAL, foreign keys on
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    db.dispose()


def _rows(db: Database, table: str) -> int:
    with db.engine.connect() as conn:
        return conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()


def test_upgrading_from_0002_keeps_versions_blobs_and_their_links(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    _at_revision(url, "0002")
    now = datetime(2026, 1, 1)
    old = Database(url, migrate=False)
    with old.engine.begin() as conn:
        conn.execute(text("INSERT INTO repositories (id, name, namespace, created_at, updated_at) "
                          "VALUES (1, 'acme/x', 'acme', :now, :now)"), {"now": now})
        for digest in (DIGEST, CONFIG):
            conn.execute(text("INSERT INTO blobs (digest, size, created_at) VALUES (:d, 3, :now)"), {"d": digest, "now": now})
            conn.execute(text("INSERT INTO repository_blobs (repository_id, digest, created_at) VALUES (1, :d, :now)"),
                         {"d": digest, "now": now})
        conn.execute(text(
            "INSERT INTO manifests (id, repository_id, digest, media_type, size, content, config_digest, created_at, "
            "base_id, base_fingerprint, base_architecture, post_id, post_fingerprint, codec, tensors, post_parameters, "
            "stored_bytes) VALUES (1, 1, :m, 'application/vnd.oci.image.manifest.v1+json', 2, x'7b7d', :c, :now, "
            "'base', :c, :c, 'post', :c, 'xor', 1, 10, 3)"), {"m": DIGEST, "c": CONFIG, "now": now})
        conn.execute(text("INSERT INTO manifest_blobs (manifest_id, digest) VALUES (1, :c)"), {"c": CONFIG})
        conn.execute(text("INSERT INTO versions (id, repository_id, name, manifest_id, created_at) "
                          "VALUES (1, 1, '1.0', 1, :now)"), {"now": now})
    old.dispose()

    db = Database(url)  # opening it migrates to the newest revision
    try:
        for table, count in (("versions", 1), ("manifest_blobs", 1), ("repository_blobs", 2), ("blobs", 2), ("manifests", 1)):
            assert _rows(db, table) == count, table
        with db.engine.connect() as conn:
            is_delta, subject = conn.execute(text("SELECT is_delta, subject_digest FROM manifests")).one()
            assert is_delta and subject is None  # what was there is a delta, and refers to nothing
            assert conn.execute(text("PRAGMA foreign_keys")).scalar_one() == 1  # on again for the requests to come
    finally:
        db.dispose()
