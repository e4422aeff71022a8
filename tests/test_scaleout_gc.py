"""Garbage collection on PostgreSQL + Ceph S3, while two registry replicas serve.

GC never deletes a blob a live manifest references, nor one uploaded or published
within the grace period; a publish racing an aggressive GC (grace 0) either finds
its blobs or is told MANIFEST_BLOB_UNKNOWN, never leaves a manifest with a missing blob.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import uuid
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, update

from deltaformat import client
from deltaformat.artifact import MANIFEST_FILE, blob_path, open_artifact
from deltaformat.oci import OCI_IMAGE_MANIFEST
from paramdelta_dev.renamed import push  # artifacts named for the repositories they go to
from paramdelta_dev.scaleout import Backends, Cluster, auth, sha256, variant
from registry.db import Database, utcnow
from registry.db.models import Blob, Manifest, ManifestBlob, UploadSession
from registry.gc import collect
from registry.storage import open_store

pytestmark = [pytest.mark.services, pytest.mark.usefixtures("client_env")]
MiB = 1 << 20
OCI = {"Content-Type": OCI_IMAGE_MANIFEST}


@pytest.fixture(scope="module")
def gc_env(cluster: Cluster):
    settings = cluster.backends.settings()
    db, store = Database(settings.resolved_database_url()), open_store(settings)
    yield settings, db, store
    store.close()
    db.dispose()


def backdate(db: Database, digests: set[str], manifest_digests: set[str] = frozenset(), hours: int = 2) -> None:
    past = utcnow() - timedelta(hours=hours)
    with db.session() as s:
        if digests:
            s.execute(update(Blob).where(Blob.digest.in_(digests)).values(created_at=past))
        if manifest_digests:
            s.execute(update(Manifest).where(Manifest.digest.in_(manifest_digests)).values(created_at=past))


def assert_live_manifests_whole(db: Database, store) -> int:  # noqa: ANN001
    """Every blob of every live manifest is in the database and in the bucket."""
    with db.session() as s:
        digests = set(s.scalars(select(ManifestBlob.digest).join(Manifest, Manifest.id == ManifestBlob.manifest_id)
                                .where(Manifest.deleted_at.is_(None))))
        recorded = set(s.scalars(select(Blob.digest).where(Blob.digest.in_(digests))))
    assert digests == recorded, f"referenced blobs missing from the database: {digests - recorded}"
    missing = [d for d in digests if store.stat(d) is None]
    assert not missing, f"referenced blobs missing from the bucket: {missing}"
    return len(digests)


def test_gc_dry_run_then_sweep_untagged_and_unreferenced(cluster: Cluster, gc_env, artifacts, tmp_path: Path):
    settings, db, store = gc_env
    a, b = cluster.a, cluster.b
    token = cluster.backends.token("gc", "push")
    kept = push(artifacts.delta, f"{a.host}/gc/keep:1.0", token=token)
    config, oci = variant(artifacts.delta, tmp_path / "drop", f"to be dropped {uuid.uuid4()}")
    dropped = push(tmp_path / "drop", f"{b.host}/gc/drop:1.0", token=token)
    assert httpx.delete(f"{a.url}/v2/gc/drop/manifests/1.0", headers=auth(token)).status_code == 202  # untag
    orphan = random.Random(11).randbytes(3 * MiB + 7)
    assert httpx.post(f"{b.url}/v2/gc/orphan/blobs/uploads/", params={"digest": sha256(orphan)}, content=orphan,
                      headers=auth(token)).status_code == 201
    layers = set(open_artifact(artifacts.delta).manifest.blob_digests())
    backdate(db, {sha256(config), sha256(orphan), *layers}, {dropped.digest})

    dry = collect(db, store, grace_seconds=3600, dry_run=True)
    assert dry.dry_run and dry.manifests_deleted >= 1 and dry.blobs_deleted >= 2
    assert dry.bytes_reclaimed >= len(orphan) + len(config)
    assert httpx.head(f"{b.url}/v2/gc/orphan/blobs/{sha256(orphan)}").status_code == 200  # nothing deleted
    assert httpx.get(f"{b.url}/v2/gc/drop/manifests/{dropped.digest}").status_code == 200

    report = collect(db, store, grace_seconds=3600)
    assert (report.manifests_deleted, report.blobs_deleted) == (dry.manifests_deleted, dry.blobs_deleted)
    assert report.bytes_reclaimed == dry.bytes_reclaimed
    assert httpx.head(f"{b.url}/v2/gc/orphan/blobs/{sha256(orphan)}").status_code == 404
    assert store.stat(sha256(orphan)) is None and store.stat(sha256(config)) is None
    assert httpx.get(f"{b.url}/v2/gc/drop/manifests/{dropped.digest}").status_code == 404
    # Shared layers stay: the kept version still pulls whole.
    for d in layers:
        assert store.stat(d) is not None
    with client.RegistryClient(b.url) as c:
        digest, data = c.resolve("gc/keep", "1.0")
        assert digest == kept.digest
        c.fetch("gc/keep", digest, data, quiet=True)
    assert_live_manifests_whole(db, store)
    assert collect(db, store, grace_seconds=3600).blobs_deleted == 0  # nothing left to do


def test_gc_grace_keeps_in_flight_uploads_and_just_published_manifests(cluster: Cluster, gc_env, artifacts, tmp_path: Path):
    settings, db, store = gc_env
    a, b = cluster.a, cluster.b
    token = cluster.backends.token("grace", "push")
    name = "grace/inflight"
    # Blobs uploaded, manifest not yet published; and a chunked upload with a multipart part and a staged tail.
    config, oci = variant(artifacts.delta, tmp_path / "v", f"in flight {uuid.uuid4()}")
    art = open_artifact(tmp_path / "v")
    for d, path in [(sha256(config), tmp_path / "v" / MANIFEST_FILE)] + [
            (d, blob_path(art.blob_dir, d)) for d in art.manifest.blob_digests()]:
        data = path.read_bytes()
        assert httpx.post(f"{a.url}/v2/{name}/blobs/uploads/", params={"digest": d}, content=data,
                          headers=auth(token)).status_code == 201
    big = random.Random(5).randbytes(7 * MiB)
    location = httpx.post(f"{b.url}/v2/{name}/blobs/uploads/", headers=auth(token)).headers["location"]
    assert httpx.patch(b.url + location, content=big[:6 * MiB], headers={**auth(token), "Content-Range": f"0-{6 * MiB - 1}"},
                       timeout=60).status_code == 202
    # A manifest pushed by digest only (untagged), just now.
    untagged = push(artifacts.other, f"{a.host}/{name}:tmp", token=token)
    assert httpx.delete(f"{a.url}/v2/{name}/manifests/tmp", headers=auth(token)).status_code == 202

    report = collect(db, store, grace_seconds=3600)
    assert report.blobs_in_grace >= 1
    assert store.stat(sha256(config)) is not None
    assert httpx.get(f"{a.url}/v2/{name}/manifests/{untagged.digest}", headers=auth(token)).status_code == 200

    # The upload goes on and the manifest publishes after the GC.
    done = httpx.put(a.url + location, params={"digest": sha256(big)}, content=big[6 * MiB:], timeout=60,
                     headers={**auth(token), "Content-Type": "application/octet-stream"})
    assert done.status_code == 201, done.text
    published = httpx.put(f"{b.url}/v2/{name}/manifests/1.0", content=oci, headers={**auth(token), **OCI})
    assert published.status_code == 201, published.text
    assert_live_manifests_whole(db, store)


def test_a_publish_racing_gc_never_loses_a_referenced_blob(cluster: Cluster, gc_env, artifacts, tmp_path: Path):
    settings, db, store = gc_env
    a, b = cluster.a, cluster.b
    token = cluster.backends.token("racegc", "push")
    layers = open_artifact(artifacts.delta).manifest.blob_digests()

    stop, passes, errors = threading.Event(), [0], []

    def gc_loop(grace: int) -> None:
        try:
            while not stop.is_set():
                collect(db, store, grace_seconds=grace, settings=settings)
                passes[0] += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
            raise

    for grace, rounds in ((0, 12), (3600, 4)):
        name = f"racegc/grace-{grace}"
        push(artifacts.delta, f"{a.host}/{name}:base", token=token)  # the layers, referenced throughout
        thread = threading.Thread(target=gc_loop, args=(grace,), daemon=True)
        stop.clear()
        thread.start()
        published = refused = 0
        try:
            for i in range(rounds):  # each round: a new config blob (unreferenced until its manifest is in)
                config, oci = variant(artifacts.delta, tmp_path / f"g{grace}-{i}", f"race {grace} {i} {uuid.uuid4()}")
                r = a if i % 2 else b
                assert httpx.post(f"{r.url}/v2/{name}/blobs/uploads/", params={"digest": sha256(config)}, content=config,
                                  headers=auth(token)).status_code == 201
                other = b if r is a else a
                resp = httpx.put(f"{other.url}/v2/{name}/manifests/{i}", content=oci, headers={**auth(token), **OCI})
                if resp.status_code == 201:
                    published += 1
                    for d in (sha256(config), *layers):  # this version is whole, even though GC keeps sweeping
                        assert store.stat(d) is not None
                    got = httpx.get(f"{r.url}/v2/{name}/blobs/{sha256(config)}", headers=auth(token), follow_redirects=True)
                    assert got.status_code == 200 and got.content == config
                else:  # GC took the unreferenced config blob first: refused cleanly, nothing half-published
                    assert resp.status_code == 400 and resp.json()["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN", resp.text
                    assert grace == 0
                    assert httpx.get(f"{r.url}/v2/{name}/manifests/{i}", headers=auth(token)).status_code == 404
                    refused += 1
        finally:
            stop.set()
            thread.join(60)
        assert not errors, errors
        assert published + refused == rounds
        if grace:
            assert published == rounds  # within the grace period a publish always finds its blobs
    assert passes[0] >= 3
    assert_live_manifests_whole(db, store)


def test_gc_purges_stale_upload_sessions_and_aborts_their_multipart_uploads(cluster: Cluster, gc_env):
    settings, db, store = gc_env
    a, be = cluster.a, cluster.backends
    token = be.token("stale", "push")
    location = httpx.post(f"{a.url}/v2/stale/upload/blobs/uploads/", headers=auth(token)).headers["location"]
    upload_id = location.rsplit("/", 1)[1]
    data = random.Random(3).randbytes(6 * MiB)
    assert httpx.patch(a.url + location, content=data, headers={**auth(token), "Content-Range": f"0-{len(data) - 1}"},
                       timeout=60).status_code == 202
    s3 = be.s3.client()
    prefix = f"registry/uploads/{upload_id}/"
    assert s3.list_multipart_uploads(Bucket=be.bucket, Prefix=prefix).get("Uploads")
    with db.session() as s:  # idle past its expiry
        s.execute(update(UploadSession).where(UploadSession.id == upload_id).values(expires_at=utcnow() - timedelta(minutes=1)))
    # And leftovers no session refers to: a multipart upload and a staged object of a replica that died.
    ghost = f"registry/uploads/{uuid.uuid4()}/"
    s3.create_multipart_upload(Bucket=be.bucket, Key=ghost + "data")
    s3.put_object(Bucket=be.bucket, Key=ghost + "tail-0", Body=b"x" * 100)

    dry = collect(db, store, grace_seconds=3600, dry_run=True, upload_grace_seconds=0)
    assert dry.uploads_purged >= 1 and s3.list_multipart_uploads(Bucket=be.bucket, Prefix=prefix).get("Uploads")
    report = collect(db, store, grace_seconds=3600, upload_grace_seconds=0)
    assert report.uploads_purged >= 3
    for p in (prefix, ghost):
        assert not s3.list_multipart_uploads(Bucket=be.bucket, Prefix=p).get("Uploads")
        assert s3.list_objects_v2(Bucket=be.bucket, Prefix=p).get("KeyCount") == 0
    assert httpx.get(a.url + location, headers=auth(token)).status_code == 404


def test_gc_command_line(scale_backends: Backends, cluster: Cluster):
    out = subprocess.run([sys.executable, "-m", "deltaformat.cli", "gc", "--dry-run", "--grace", "0", "--json"],
                         env=scale_backends.env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["dry_run"] is True and report["grace_seconds"] == 0 and report["bytes_reclaimed"] >= 0
    from registry.gc import GcReport

    assert "reclaimable 0 bytes" in GcReport(dry_run=True, grace_seconds=86400).summary()
