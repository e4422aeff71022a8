"""Scale-out: the registry on a real PostgreSQL and a real S3 (Ceph RADOS Gateway), two replicas sharing them.

Replica A redirects blob GETs to presigned URLs (signed for a recording forwarder that
stands for the public storage host), B streams blobs itself (PARAMDELTA_S3_REDIRECT=0).
See paramdelta_dev/scaleout.py (the fixtures are in tests/conftest.py).
"""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

import httpx
import pytest

import deltaformat
from deltaformat import client
from deltaformat.artifact import open_artifact
from deltaformat.errors import RegistryError
from paramdelta_dev.assertions import assert_bit_equal
from paramdelta_dev.renamed import push, renamed  # artifacts named for the repositories they go to
from paramdelta_dev.scaleout import Cluster, Replica, auth, sha256
from paramdelta_dev.tiny_models import load_state

pytestmark = [pytest.mark.services, pytest.mark.usefixtures("client_env")]
MiB = 1 << 20


def start_upload(r: Replica, name: str, token: str) -> str:
    resp = httpx.post(f"{r.url}/v2/{name}/blobs/uploads/", headers=auth(token))
    assert resp.status_code == 202, resp.text
    return resp.headers["location"]


def patch(r: Replica, location: str, data: bytes, offset: int, token: str) -> httpx.Response:
    return httpx.patch(r.url + location, content=data, timeout=60, headers={
        **auth(token), "Content-Type": "application/octet-stream", "Content-Range": f"{offset}-{offset + len(data) - 1}"})


def offset_of(r: Replica, location: str, token: str) -> int:
    resp = httpx.get(r.url + location, headers=auth(token))
    assert resp.status_code == 204, resp.text
    return int(resp.headers["upload-offset"])


def multipart_uploads(cluster: Cluster, upload_id: str) -> list[dict]:
    s3 = cluster.backends.s3.client()
    return s3.list_multipart_uploads(Bucket=cluster.backends.bucket, Prefix=f"registry/uploads/{upload_id}/").get("Uploads", [])


def upload_objects(cluster: Cluster, upload_id: str) -> list[str]:
    s3 = cluster.backends.s3.client()
    listing = s3.list_objects_v2(Bucket=cluster.backends.bucket, Prefix=f"registry/uploads/{upload_id}/")
    return [o["Key"] for o in listing.get("Contents", [])]


def test_core_paths_on_postgresql_and_s3(cluster: Cluster, artifacts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    a, b, be = cluster.a, cluster.b, cluster.backends
    token = be.token("core", "push")
    name = "core/tiny-chat"

    pushed = push(artifacts.delta, f"{a.host}/{name}:1.0", token=token)
    assert pushed.skipped == 0 and pushed.uploaded == len(open_artifact(artifacts.delta).manifest.blob_digests()) + 1
    again = push(artifacts.delta, f"{b.host}/{name}:1.0", token=token)  # the other replica: nothing to upload
    assert (again.uploaded, again.skipped, again.digest) == (0, pushed.uploaded, pushed.digest)

    found = client.search("tiny chat", namespace="core", registry=b.url).items  # search on PostgreSQL
    assert [d.name for d in found] == [name] and found[0].latest_digest == pushed.digest

    # Pull and apply through the redirecting replica (its token from the environment), bit for bit.
    monkeypatch.setenv("PARAMDELTA_REGISTRY", a.url)
    monkeypatch.setenv("PARAMDELTA_TOKEN", token)
    result = deltaformat.apply([f"{a.host}/{name}:1.0"], artifacts.base, tmp_path / "model", quiet=True)
    assert result.verified_exact
    assert_bit_equal(load_state(tmp_path / "model"), load_state(artifacts.post))

    # Immutable versions, latest, tags, delete = untag.
    with pytest.raises(RegistryError, match="immutable") as exc:
        push(artifacts.other, f"{b.host}/{name}:1.0", token=token)
    assert exc.value.status == 409
    two = push(artifacts.other, f"{b.host}/{name}:2.0", token=token)
    with client.RegistryClient(a.url, token) as c:
        assert c.resolve(name, "latest")[0] == two.digest
        assert c.get_json("tags", f"/v2/{name}/tags/list", {})["tags"] == ["1.0", "2.0", "latest"]
        assert httpx.delete(f"{b.url}/v2/{name}/manifests/2.0", headers=auth(token)).status_code == 202
        assert c.resolve(name, "latest")[0] == pushed.digest

    # Ranges, streamed (B) and through the redirect (A -> storage).
    art = open_artifact(artifacts.delta)
    digest = max(art.manifest.blob_sizes().items(), key=lambda kv: kv[1])[0]
    data = (art.blob_dir / digest.removeprefix("sha256:")).read_bytes()
    part = httpx.get(f"{b.url}/v2/{name}/blobs/{digest}", headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == data[10:20]
    redirected = httpx.get(f"{a.url}/v2/{name}/blobs/{digest}", headers={**auth(token), "Range": "bytes=10-19"},
                           follow_redirects=False)
    assert redirected.status_code == 307
    ranged = httpx.get(redirected.headers["location"], headers={"Range": "bytes=10-19"})
    assert ranged.status_code == 206 and ranged.content == data[10:20]

    # A tampered upload stores nothing, in the database or the bucket.
    body = b"what the client meant" * 1000
    wrong = sha256(b"something else")
    bad = httpx.post(f"{a.url}/v2/{name}/blobs/uploads/", params={"digest": wrong}, content=body, headers=auth(token))
    assert bad.status_code == 400 and bad.json()["errors"][0]["code"] == "DIGEST_INVALID"
    for digest_ in (wrong, sha256(body)):
        assert httpx.head(f"{b.url}/v2/{name}/blobs/{digest_}").status_code == 404
    s3 = be.s3.client()
    for digest_ in (wrong, sha256(body)):
        hex_ = digest_.removeprefix("sha256:")
        assert s3.list_objects_v2(Bucket=be.bucket, Prefix=f"registry/blobs/sha256/{hex_[:2]}/{hex_}").get("KeyCount") == 0


def test_chunked_upload_alternating_between_replicas_completes(cluster: Cluster):
    a, b = cluster.a, cluster.b
    token = cluster.backends.token("chunks", "push")
    name = "chunks/alternating"
    data = random.Random(4).randbytes(14 * MiB + 12345)
    # Small PATCHes are staged until a 5 MiB part fills; big ones cross part boundaries.
    sizes = [300 * 1024, 2 * MiB, 1 * MiB, 7 * MiB + 5, 17, 3 * MiB]
    sizes.append(len(data) - sum(sizes))
    location = start_upload(a, name, token)
    upload_id = location.rsplit("/", 1)[1]
    offset = 0
    for i, size in enumerate(sizes[:-1]):
        here, there = (a, b) if i % 2 == 0 else (b, a)
        resp = patch(here, location, data[offset:offset + size], offset, token)
        assert resp.status_code == 202, resp.text
        offset += size
        assert offset_of(there, location, token) == offset  # the other replica knows where it stands
    assert multipart_uploads(cluster, upload_id), "the session should be an S3 multipart upload by now"
    stale = patch(a, location, b"x" * 10, 0, token)  # not where the upload stands
    assert stale.status_code == 416 and stale.headers["upload-offset"] == str(offset)

    digest = sha256(data)
    done = httpx.put(b.url + location, params={"digest": digest}, content=data[offset:], timeout=60,
                     headers={**auth(token), "Content-Type": "application/octet-stream"})
    assert done.status_code == 201, done.text
    assert multipart_uploads(cluster, upload_id) == [] and upload_objects(cluster, upload_id) == []

    for r in (a, b):
        head = httpx.head(f"{r.url}/v2/{name}/blobs/{digest}", headers=auth(token))
        assert head.status_code == 200 and int(head.headers["content-length"]) == len(data)
    assert httpx.get(f"{b.url}/v2/{name}/blobs/{digest}", timeout=60).content == data
    assert httpx.get(f"{a.url}/v2/{name}/blobs/{digest}", headers=auth(token), follow_redirects=True, timeout=60).content == data


def test_pull_through_either_replica_redirect_and_streamed_and_no_token_reaches_storage(cluster: Cluster, artifacts,
                                                                                     tmp_path: Path):
    a, b, proxy = cluster.a, cluster.b, cluster.proxy
    token = cluster.backends.token("pulls", "push")
    name = "pulls/tiny-chat"
    pushed = push(artifacts.delta, f"{b.host}/{name}:1.0", token=token)
    art = open_artifact(artifacts.delta)
    digest, size = max(art.manifest.blob_sizes().items(), key=lambda kv: kv[1])

    # A: 307 to a URL on the public storage host, with the digest and size on the redirect itself.
    assert httpx.get(f"{a.url}/v2/{name}/blobs/{digest}").status_code == 401  # anonymous pull is off on A
    redirect = httpx.get(f"{a.url}/v2/{name}/blobs/{digest}", headers=auth(token), follow_redirects=False)
    assert redirect.status_code == 307
    assert redirect.headers["location"].startswith(proxy.url + "/")
    assert "X-Amz-Signature=" in redirect.headers["location"] and token not in redirect.headers["location"]
    assert redirect.headers["docker-content-digest"] == digest
    assert redirect.headers["x-blob-size"] == str(size)
    assert redirect.headers["content-length"] == "0" and redirect.content == b""
    head = httpx.head(f"{a.url}/v2/{name}/blobs/{digest}", headers=auth(token))  # HEAD is answered, not redirected
    assert head.status_code == 200 and head.headers["content-length"] == str(size)

    # B: the registry streams the bytes.
    streamed = httpx.get(f"{b.url}/v2/{name}/blobs/{digest}", follow_redirects=False)
    assert streamed.status_code == 200 and sha256(streamed.content) == digest

    # The client, with a token, through A: every blob via storage, and the token never sent there.
    seen_before = len(proxy.seen)
    pulled = client.pull(f"{a.host}/{name}:1.0", tmp_path / "via-a", token=token)
    storage_requests = proxy.seen[seen_before:]
    blob_keys = {d.removeprefix("sha256:") for d in art.manifest.blob_digests()}
    fetched = {r.path.split("?")[0].rsplit("/", 1)[1] for r in storage_requests}
    assert blob_keys <= fetched
    assert all(r.status in (200, 206) for r in storage_requests)
    assert not any("authorization" in r.headers for r in storage_requests), "the token was forwarded to storage"
    assert all(r.headers["host"] == proxy.url.removeprefix("http://") for r in storage_requests)
    assert deltaformat.verify(tmp_path / "via-a").blobs == len(art.manifest.blob_digests())

    # And through B (anonymous, streamed), into another cache.
    via_b = client.RegistryClient(b.url, cache=client.Cache(tmp_path / "cache-b"))
    with via_b:
        got, oci = via_b.resolve(name, "1.0")
        assert got == pushed.digest
        via_b.fetch(name, got, oci, quiet=True)
    del pulled


def test_concurrent_publishes_of_one_version_exactly_one_wins(cluster: Cluster, artifacts):
    a, b = cluster.a, cluster.b
    token = cluster.backends.token("race", "push")
    name = "race/tiny"
    # Named for the repository but no version, so that each may be published under every version below.
    one = push(renamed(artifacts.delta, name, None), f"{a.host}/{name}:seed-1", token=token)
    two = push(renamed(artifacts.other, name, None), f"{b.host}/{name}:seed-2", token=token)
    manifests = {d: httpx.get(f"{a.url}/v2/{name}/manifests/{d}", headers=auth(token)).content for d in (one.digest, two.digest)}

    def put(r: Replica, version: str, data: bytes, barrier: threading.Barrier, out: dict) -> None:
        barrier.wait()
        out[r.name] = httpx.put(f"{r.url}/v2/{name}/manifests/{version}", content=data, timeout=60,
                                headers={**auth(token), "Content-Type": "application/vnd.oci.image.manifest.v1+json"})

    for i in range(6):
        out: dict[str, httpx.Response] = {}
        barrier = threading.Barrier(2)
        first, second = (a, b) if i % 2 == 0 else (b, a)
        threads = [threading.Thread(target=put, args=(first, f"v{i}", manifests[one.digest], barrier, out)),
                   threading.Thread(target=put, args=(second, f"v{i}", manifests[two.digest], barrier, out))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        codes = sorted(r.status_code for r in out.values())
        assert codes == [201, 409], {k: (v.status_code, v.text) for k, v in out.items()}
        winner = next(r for r in out.values() if r.status_code == 201).headers["docker-content-digest"]
        loser = next(r for r in out.values() if r.status_code == 409)
        assert loser.json()["errors"][0]["detail"]["published"] == winner
        assert httpx.get(f"{b.url}/v2/{name}/manifests/v{i}").headers["docker-content-digest"] == winner

    # The same content at once from both: idempotent, both succeed.
    out = {}
    barrier = threading.Barrier(2)
    threads = [threading.Thread(target=put, args=(r, "same", manifests[one.digest], barrier, out)) for r in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.status_code for r in out.values()) == [201, 201]


def test_killing_a_replica_mid_upload_loses_nothing_acknowledged(cluster: Cluster):
    a, b, be = cluster.a, cluster.b, cluster.backends
    token = be.token("kill", "push")
    name = "kill/upload"
    # Its hold on an upload it is writing ends when it dies: at once on this host (registry.process), else when
    # the lease lapses, here after 2 s (PARAMDELTA_UPLOAD_LEASE_SECONDS; 30 by default).
    c = Replica(be, "c", PARAMDELTA_S3_REDIRECT="0", PARAMDELTA_UPLOAD_LEASE_SECONDS="2").start()
    try:
        data = random.Random(7).randbytes(16 * MiB)
        location = start_upload(c, name, token)
        acked = 0
        for size in (2 * MiB, 4 * MiB, 1 * MiB):  # the second crosses the 5 MiB part boundary
            resp = patch(c, location, data[acked:acked + size], acked, token)
            assert resp.status_code == 202
            acked += size

        # A PATCH that is half sent when the replica dies (SIGKILL: nothing after it runs).
        half_sent, killed = threading.Event(), threading.Event()
        size = 6 * MiB

        def body():
            for i in range(0, size, MiB):
                yield data[acked + i:acked + i + MiB]
                if i == 2 * MiB:
                    half_sent.set()
                    killed.wait(30)

        errors: list[BaseException] = []

        def send() -> None:
            try:
                httpx.patch(c.url + location, content=body(), timeout=30, headers={
                    **auth(token), "Content-Type": "application/octet-stream", "Content-Range": f"{acked}-{acked + size - 1}"})
            except BaseException as exc:  # noqa: BLE001 - expected: the server died
                errors.append(exc)

        t = threading.Thread(target=send)
        t.start()
        assert half_sent.wait(30)
        time.sleep(0.5)
        c.kill()
        killed.set()
        t.join(30)
        assert errors, "the interrupted PATCH should have failed"
    finally:
        c.stop()

    # Another replica knows where the upload stands: at least everything acknowledged.
    offset = offset_of(a, location, token)
    assert acked <= offset <= acked + size
    deadline = time.monotonic() + 30
    while offset < len(data):
        r = a if (offset // MiB) % 2 else b
        chunk = data[offset:offset + 3 * MiB]
        resp = patch(r, location, chunk, offset, token)
        if resp.status_code == 416 and "busy" in resp.text and time.monotonic() < deadline:
            time.sleep(0.2)  # the dead replica still holds the upload until its lease lapses
            continue
        assert resp.status_code == 202
        offset += len(chunk)
    digest = sha256(data)
    done = httpx.put(a.url + location, params={"digest": digest}, headers=auth(token), timeout=60)
    assert done.status_code == 201, done.text
    assert sha256(httpx.get(f"{b.url}/v2/{name}/blobs/{digest}", timeout=60).content) == digest


def test_readyz_metrics_and_json_logs(cluster: Cluster):
    a, b, be = cluster.a, cluster.b, cluster.backends
    for r in (a, b):
        ready = httpx.get(f"{r.url}/readyz")
        assert ready.status_code == 200 and ready.json() == {"status": "ready", "database": "ok", "storage": "ok"}

    metrics = httpx.get(f"{b.url}/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    series = {line.split(" ")[0]: float(line.rsplit(" ", 1)[1]) for line in metrics.text.splitlines()
              if line and not line.startswith("#")}
    assert any(k.startswith('paramdelta_http_requests_total{method="GET",route="/readyz",status="200"}') for k in series)
    assert any(k.startswith("paramdelta_http_request_duration_seconds_bucket") for k in series)
    assert sum(v for k, v in series.items() if k.startswith("paramdelta_http_sent_bytes_total")) > 0
    assert "paramdelta_http_errors_total" in metrics.text and "process_resident_memory_bytes" in metrics.text

    # A logs JSON, one object a line, one line per request, and never a token.
    token = be.token("logs", "push")
    assert httpx.get(f"{a.url}/v2/logs/none/tags/list", headers=auth(token)).status_code == 404
    time.sleep(0.2)
    lines = [json.loads(line) for line in a.log_text().splitlines() if line.startswith("{")]
    access = [e for e in lines if e["logger"] == "paramdelta.access"]
    assert any(e["http"]["path"] == "/v2/logs/none/tags/list" and e["http"]["status"] == 404 for e in access)
    assert all({"time", "level", "message"} <= e.keys() for e in lines)
    assert token not in a.log_text()


def test_readyz_answers_503_when_storage_is_unreachable(cluster: Cluster):
    from fastapi.testclient import TestClient

    from registry.app import create_app

    app = create_app(cluster.backends.settings(blob_store="s3://no-such-bucket-here/x"))
    with TestClient(app) as tc:
        resp = tc.get("/readyz")
    assert resp.status_code == 503
    body = resp.json()
    assert body["database"] == "ok" and body["storage"].startswith("error:")


def test_postgresql_schema_from_the_migrations_matches_the_models(cluster: Cluster):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import create_engine

    from registry.db.models import Base

    engine = create_engine(cluster.backends.database_url)  # migrated by the two replicas that started together
    try:
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata) == []
    finally:
        engine.dispose()
