"""Trust (issue #10), uploads on the scale-out: PostgreSQL and a real Ceph S3, two replicas sharing them.

The guarantees of tests/test_trust_uploads.py where the upload is an S3 multipart upload and the
session row is in PostgreSQL: a committed blob is never replaced and no upload request can change it,
one request at a time per session (across replicas), per-token session quotas.
"""

from __future__ import annotations

import hashlib
import random
import uuid
from collections.abc import Iterator

import httpx
import pytest

from paramdelta_dev.held import HeldRequest, UploadRows
from paramdelta_dev.scaleout import Backends, Cluster, auth, sha256
from registry.storage import UploadState
from registry.storage.s3 import S3Store

pytestmark = pytest.mark.services
MiB = 1 << 20


@pytest.fixture
def rows(scale_backends: Backends) -> Iterator[UploadRows]:
    r = UploadRows(scale_backends.database_url)
    yield r
    r.close()


def stored_object(cluster: Cluster, digest: str) -> bytes:
    hex_ = digest.removeprefix("sha256:")
    s3 = cluster.backends.s3.client()
    return s3.get_object(Bucket=cluster.backends.bucket, Key=f"registry/blobs/sha256/{hex_[:2]}/{hex_}")["Body"].read()


def test_a_held_patch_cannot_poison_a_blob_across_replicas(cluster: Cluster, rows: UploadRows):
    a, b = cluster.a, cluster.b
    victim, evil = cluster.backends.token("s3victim", "push"), cluster.backends.token("s3evil", "push")
    genuine = random.Random(21).randbytes(6 * MiB + 123)  # a whole 5 MiB part and a staged tail
    digest = sha256(genuine)
    assert httpx.post(f"{a.url}/v2/s3victim/x/blobs/uploads/", params={"digest": digest}, content=genuine,
                      headers=auth(victim), timeout=60).status_code == 201
    poison = b"\0" * len(genuine)

    for lapse in (False, True):
        start = httpx.post(f"{b.url}/v2/s3evil/x/blobs/uploads/", headers=auth(evil))
        location, upload_id = start.headers["location"], start.headers["docker-upload-uuid"]
        held = HeldRequest(a, "PATCH", location, evil, len(poison), Content_Range=f"0-{len(poison) - 1}")
        rows.wait_until_held(upload_id)
        if lapse:  # as if the held request had stalled past its lease: the upload can be completed under it
            rows.lapse_lease(upload_id)
        put = httpx.put(b.url + location, params={"digest": digest}, content=genuine, headers=auth(evil), timeout=60)
        if lapse:
            assert put.status_code == 201, put.text
            status, answer = held.send_body(poison)
            assert status == 404 and answer["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"
        else:  # the other replica refuses a second request on the same upload
            assert put.status_code == 416 and "busy" in put.json()["errors"][0]["message"]
            assert held.send_body(poison)[0] == 202
        assert sha256(stored_object(cluster, digest)) == digest
        served = httpx.get(f"{b.url}/v2/s3victim/x/blobs/{digest}", timeout=60)
        assert served.status_code == 200 and sha256(served.content) == digest


def test_open_sessions_are_limited_per_token_across_replicas(cluster: Cluster):
    token = cluster.backends.token("s3quota", "push")
    for i in range(64):  # the default PARAMDELTA_UPLOAD_MAX_SESSIONS, counted in the shared database
        replica = (cluster.a, cluster.b)[i % 2]
        assert httpx.post(f"{replica.url}/v2/s3quota/x/blobs/uploads/", headers=auth(token)).status_code == 202
    over = httpx.post(f"{cluster.a.url}/v2/s3quota/x/blobs/uploads/", headers=auth(token))
    assert over.status_code == 429 and "PARAMDELTA_UPLOAD_MAX_SESSIONS" in over.json()["errors"][0]["message"]


# -- the driver on its own ------------------------------------------------------------


@pytest.fixture(scope="module")
def store(scale_backends: Backends) -> Iterator[S3Store]:
    from registry.storage import open_store

    st = open_store(scale_backends.settings(blob_store=f"s3://{scale_backends.bucket}/trust-{uuid.uuid4().hex[:8]}"))
    yield st
    st.close()


def upload(st: S3Store, data: bytes) -> tuple[str, UploadState]:
    uid = str(uuid.uuid4())
    w = st.upload_writer(uid, st.begin_upload(uid))
    w.write(data)
    return uid, w.close()


def multipart_uploads(st: S3Store, uid: str) -> list[dict]:
    return st.client.list_multipart_uploads(Bucket=st.bucket, Prefix=st._upload_prefix(uid)).get("Uploads", [])


def test_a_commit_never_replaces_a_stored_object(store: S3Store):
    data = random.Random(22).randbytes(6 * MiB)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    there = b"what the store holds under this key"  # whatever it is, a commit leaves it alone
    store.client.put_object(Bucket=store.bucket, Key=store.blob_key(digest), Body=there)
    uid, state = upload(store, data)
    assert store.upload_digest(uid, state) == digest
    store.commit_upload(uid, state, digest)
    assert b"".join(store.open_range(digest)) == there
    assert list(store._objects(store._upload_prefix(uid))) == [] and multipart_uploads(store, uid) == []


def test_a_part_sent_after_the_commit_changes_nothing(store: S3Store):
    data = random.Random(23).randbytes(6 * MiB)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    uid, state = upload(store, data)
    store.commit_upload(uid, state, store.upload_digest(uid, state))
    late = store.client.exceptions.ClientError
    with pytest.raises(late, match="NoSuchUpload"):  # a writer still holding the multipart upload's id
        store.client.upload_part(Bucket=store.bucket, Key=store._upload_prefix(uid) + "data", UploadId=state.driver_state["mpu"],
                                 PartNumber=1, Body=b"\0" * (5 * MiB))
    assert b"".join(store.open_range(digest)) == data
