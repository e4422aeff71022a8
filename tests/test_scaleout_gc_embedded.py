"""Garbage collection on the embedded default (SQLite + a blob folder), with the registry running."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import httpx
from sqlalchemy import update

from deltaformat import client
from deltaformat.artifact import open_artifact
from paramdelta_dev.renamed import push  # artifacts named for the repositories they go to
from paramdelta_dev.scaleout import sha256, variant
from paramdelta_dev.serve import RegistryServer
from registry.db import Database, utcnow
from registry.db.models import Blob, Manifest
from registry.gc import collect
from registry.settings import Settings
from registry.storage import open_store


def test_gc_on_sqlite_and_the_blob_folder(tmp_path: Path, artifacts, client_env):
    srv = RegistryServer(tmp_path / "data").start()
    try:
        token = srv.token("emb", "push")
        auth = {"Authorization": f"Bearer {token}"}
        kept = push(artifacts.delta, f"{srv.host}/emb/keep:1.0", token=token)
        config, _ = variant(artifacts.delta, tmp_path / "drop", f"drop {uuid.uuid4()}")
        dropped = push(tmp_path / "drop", f"{srv.host}/emb/drop:1.0", token=token)
        assert httpx.delete(f"{srv.url}/v2/emb/drop/manifests/1.0", headers=auth).status_code == 202
        orphan = random.Random(1).randbytes(100_000)
        assert httpx.post(f"{srv.url}/v2/emb/orphan/blobs/uploads/", params={"digest": sha256(orphan)}, content=orphan,
                          headers=auth).status_code == 201
        stray = srv.data / "blobs" / "uploads" / str(uuid.uuid4())  # an upload file no session knows
        stray.write_bytes(b"x" * 1000)
        old = time.time() - 7200
        os.utime(stray, (old, old))

        settings = Settings(data=srv.data)
        db, store = Database(settings.resolved_database_url()), open_store(settings)
        past = utcnow() - timedelta(hours=2)
        with db.session() as s:
            s.execute(update(Blob).values(created_at=past))
            s.execute(update(Manifest).where(Manifest.digest == dropped.digest).values(created_at=past))

        dry = collect(db, store, grace_seconds=3600, dry_run=True)
        assert (dry.manifests_deleted, dry.blobs_deleted) == (1, 2)
        assert dry.bytes_reclaimed == len(orphan) + len(config) and dry.uploads_purged == 0
        assert srv.blob_file(sha256(orphan)).exists()

        report = collect(db, store, grace_seconds=3600)
        assert (report.manifests_deleted, report.blobs_deleted, report.bytes_reclaimed) == (1, 2, dry.bytes_reclaimed)
        assert report.uploads_purged == 1 and not stray.exists()
        assert not srv.blob_file(sha256(orphan)).exists() and not srv.blob_file(sha256(config)).exists()
        for d in open_artifact(artifacts.delta).manifest.blob_digests():
            assert srv.blob_file(d).exists()
        with client.RegistryClient(srv.url) as c:
            digest, data = c.resolve("emb/keep", "1.0")
            assert digest == kept.digest
            c.fetch("emb/keep", digest, data, quiet=True)
        db.dispose()

        out = subprocess.run([sys.executable, "-m", "deltaformat.cli", "gc", "--data", str(srv.data), "--json"],
                             capture_output=True, text=True, timeout=120,
                             env={k: v for k, v in os.environ.items() if not k.startswith("PARAMDELTA_")})
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["blobs_deleted"] == 0
    finally:
        srv.stop()
