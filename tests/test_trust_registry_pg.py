"""Issue #10 on PostgreSQL (the scale-out's real server, see paramdelta_dev/scaleout.py): the URL as libpq and
hosting providers write it works, and values longer than a column are a 400 naming the field, not a 500."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from test_registry_api import InProcess
from test_trust_registry import _write_artifact

from deltaformat.artifact import open_artifact
from deltaformat.oci import build_oci_manifest
from paramdelta_dev.artifacts import Artifacts
from paramdelta_dev.scaleout import Backends
from registry.db import Database

pytestmark = [pytest.mark.services, pytest.mark.usefixtures("client_env")]


def _plain(url: str, scheme: str) -> str:
    """The same database's URL without a driver name: postgresql://user@host:port/db."""
    return scheme + "://" + url.split("://", 1)[1]


def _own_database(url: str) -> str:
    """A new database on the same server, so that this test's registry (blobs in a local folder) does not mix
    its rows with the scale-out cluster's (its GC tests count every referenced blob in the bucket)."""
    name = f"trust_{uuid.uuid4().hex[:12]}"
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return url.rsplit("/", 1)[0] + "/" + name


def test_plain_postgresql_urls_and_overlong_values_on_postgresql(scale_backends: Backends, artifacts: Artifacts,
                                                                tmp_path: Path):
    for scheme in ("postgresql", "postgres"):
        db = Database(_plain(scale_backends.database_url, scheme))
        try:
            with db.engine.connect() as conn:
                assert conn.execute(text("SELECT 1")).scalar() == 1
        finally:
            db.dispose()

    reg = InProcess(tmp_path / "registry", database_url=_plain(_own_database(scale_backends.database_url), "postgresql"))
    with reg.http:
        auth = reg.token("pglong", "push")
        art = open_artifact(artifacts.delta)
        manifest = art.manifest.model_copy(update={"name": "pglong/base-id", "version": "1.0"})
        manifest.base = manifest.base.model_copy(update={"id": "org/" + "m" * 300})
        folder = _write_artifact(tmp_path / "long", manifest.model_dump_json().encode(), artifacts.delta)
        reg.upload_blobs("pglong/base-id", folder, auth)
        long_art = open_artifact(folder)
        r = reg.http.put("/v2/pglong/base-id/manifests/1.0", content=build_oci_manifest(long_art.manifest, long_art.manifest_bytes),
                         headers={**auth, "Content-Type": "application/vnd.oci.image.manifest.v1+json"})
        assert r.status_code == 400 and "base.id has 304 characters" in r.json()["errors"][0]["message"]

        cursor = base64.urlsafe_b64encode(json.dumps(["x" * 300]).encode()).decode()
        for path, params in (("/api/v1/deltas", {"sort": "name", "cursor": cursor}), ("/api/v1/deltas", {"namespace": "n" * 300}),
                             ("/v2/pglong/" + "x" * 300 + "/tags/list", {}), ("/api/v1/deltas/pglong/x/versions/" + "v" * 200, {})):
            r = reg.http.get(path, params=params)
            assert r.status_code == 400, (path[:60], r.text[:300])
        assert reg.publish("pglong/ok", "1.0", artifacts.delta, auth)  # and the registry works on this URL
