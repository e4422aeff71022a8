"""The blob-driver interface (registry.storage.base) as garbage collection and the services use it: the same
contract tests on the filesystem driver and on the S3 driver (against the real Ceph gateway), then what a
client sees when a driver fails (its storage errors mapped to OCI error codes in one place)."""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from paramdelta_dev.scaleout import Backends
from registry.app import create_app
from registry.auth import create_token
from registry.settings import Settings
from registry.storage import BlobStore, UploadState, open_store
from registry.storage import s3 as s3mod
from registry.storage.errors import BlobNotFound, StorageUnavailable, UploadCorrupted
from registry.storage.filesystem import FilesystemStore

LATER = timedelta(minutes=5)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def now() -> datetime:
    return datetime.now(timezone.utc)


@pytest.fixture(params=["filesystem", pytest.param("s3", marks=pytest.mark.services)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    if request.param == "filesystem":
        st: BlobStore = FilesystemStore(tmp_path / "blobs")
    else:
        backends: Backends = request.getfixturevalue("scale_backends")
        st = open_store(backends.settings(blob_store=f"s3://{backends.bucket}/contract-{uuid.uuid4().hex[:8]}"))
    yield st
    st.close()


def upload(st: BlobStore, *requests: bytes) -> tuple[str, UploadState]:
    """An upload of ``requests`` (one writer each), its state round-tripped through JSON as the database does."""
    uid = str(uuid.uuid4())
    state = st.begin_upload(uid)
    for data in requests:
        w = st.upload_writer(uid, state)
        w.write(data)
        closed = w.close()
        state = UploadState(closed.size, json.loads(json.dumps(closed.driver_state)))
    return uid, state


def commit(st: BlobStore, uid: str, state: UploadState) -> str:
    state = st.prepare_commit(uid, state)
    digest = st.upload_digest(uid, state)
    st.commit_upload(uid, state, digest)
    return digest


# -- the contract, on both drivers --------------------------------------------------------


def test_blobs_lists_what_is_stored_with_size_and_utc_write_time(store: BlobStore):
    before = now() - timedelta(seconds=60)  # room for a clock skew between this host and the store
    data = random.Random(1).randbytes(3000)
    digest = commit(store, *upload(store, data[:1000], data[1000:]))
    assert digest == sha256(data)
    listed = {b.digest: b for b in store.blobs()}
    assert set(listed) == {digest}
    assert listed[digest].size == len(data)
    assert listed[digest].modified.utcoffset() == timedelta(0)  # aware UTC: compared with the database's times
    assert before <= listed[digest].modified <= now() + timedelta(seconds=60)
    store.delete(digest)
    assert list(store.blobs()) == []


def test_a_missing_blob_is_blob_not_found_also_a_file_not_found_error(store: BlobStore):
    digest = commit(store, *upload(store, b"soon gone"))
    store.delete(digest)
    with pytest.raises(BlobNotFound):
        store.open_range(digest)
    with pytest.raises(FileNotFoundError):  # what callers caught before the storage errors existed
        store.open_range(digest, 0, 3)
    assert store.stat(digest) is None


def test_purge_uploads_removes_the_bytes_of_uploads_no_session_has(store: BlobStore):
    uid, state = upload(store, b"x" * 700)
    assert store.purge_uploads({}, now() - LATER).count == 0  # younger than the cutoff: kept
    purged = store.purge_uploads({}, now() + LATER)
    assert purged.count >= 1 and purged.bytes >= 700
    assert store.purge_uploads({}, now() + LATER).count == 0  # nothing left
    with pytest.raises(UploadCorrupted):  # its bytes are gone: committing it is refused, not a server fault
        commit(store, uid, state)
    assert list(store.blobs()) == []


def test_purge_uploads_keeps_a_live_upload_whole(store: BlobStore):
    data = random.Random(2).randbytes(5000)
    uid, state = upload(store, data[:2000], data[2000:])  # two requests: the S3 driver staged a tail twice
    store.purge_uploads({uid: state}, now() + LATER)
    digest = commit(store, uid, state)
    assert digest == sha256(data)
    assert b"".join(store.open_range(digest)) == data


def test_a_committed_blob_outlives_purge_uploads(store: BlobStore):
    digest = commit(store, *upload(store, b"committed"))
    store.purge_uploads({}, now() + LATER)
    assert b"".join(store.open_range(digest)) == b"committed"


# -- a store that cannot be reached ----------------------------------------------------------


@pytest.fixture
def unreachable_s3(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """Settings for an S3 store on a port nothing listens on, with botocore's retries cut to one attempt."""
    for name, value in (("AWS_ACCESS_KEY_ID", "k"), ("AWS_SECRET_ACCESS_KEY", "s"), ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(s3mod, "RETRIES", {"max_attempts": 1, "mode": "standard"}, raising=False)
    return {"blob_store": "s3://nowhere/registry", "s3_endpoint_url": "http://127.0.0.1:9"}


def test_an_unreachable_s3_store_raises_storage_unavailable(unreachable_s3: dict[str, object], tmp_path: Path):
    st = open_store(Settings(data=tmp_path, **unreachable_s3))
    with pytest.raises(StorageUnavailable):
        st.stat(sha256(b"x"))
    with pytest.raises(StorageUnavailable):
        list(st.blobs())


# -- what clients see: storage errors as OCI error codes --------------------------------------


def _app(tmp_path: Path, **settings: object) -> tuple[TestClient, dict[str, str]]:
    app = create_app(Settings(data=tmp_path / "registry", **settings))
    token = create_token(app.state.registry.db, "acme", "push")
    return TestClient(app), {"Authorization": f"Bearer {token}"}


def _error(response) -> dict:  # noqa: ANN001
    return response.json()["errors"][0]


def test_a_blob_deleted_between_lookup_and_read_answers_404_blob_unknown(tmp_path: Path):
    http, auth = _app(tmp_path)
    with http:
        data = b"collected mid-read"
        digest = sha256(data)
        assert http.post("/v2/acme/m/blobs/uploads/", params={"digest": digest}, content=data, headers=auth).status_code == 201
        reg = http.app.state.registry
        looked_up = reg.blobs.size

        def gc_runs_right_after(name: str, d: str) -> int:  # garbage collection deletes the bytes in between
            size = looked_up(name, d)
            reg.store.delete(d)
            return size

        reg.blobs.size = gc_runs_right_after
        r = http.get(f"/v2/acme/m/blobs/{digest}", headers=auth)
        assert r.status_code == 404 and _error(r)["code"] == "BLOB_UNKNOWN", r.text
        assert digest in _error(r)["message"]


def test_a_short_upload_file_answers_400_blob_upload_invalid(tmp_path: Path):
    http, auth = _app(tmp_path)
    with http:
        data = b"0123456789" * 10
        start = http.post("/v2/acme/m/blobs/uploads/", headers=auth)
        location = start.headers["location"]
        assert http.patch(location, content=data, headers=auth).status_code == 202
        uid = location.rstrip("/").rsplit("/", 1)[-1].split("?")[0]
        (http.app.state.registry.store.uploads / uid).write_bytes(data[:50])  # cut short behind the registry's back
        r = http.put(location, params={"digest": sha256(data)}, headers=auth)
        assert r.status_code == 400 and _error(r)["code"] == "BLOB_UPLOAD_INVALID", r.text
        assert "100" in _error(r)["message"] and "50" in _error(r)["message"]


def test_an_unreachable_s3_store_answers_503_unavailable(tmp_path: Path, unreachable_s3: dict[str, object]):
    http, auth = _app(tmp_path, **unreachable_s3)
    with http:
        data = b"nowhere to go"
        r = http.post("/v2/acme/m/blobs/uploads/", params={"digest": sha256(data)}, content=data, headers=auth)
        assert r.status_code == 503 and _error(r)["code"] == "UNAVAILABLE", r.text
        start = http.post("/v2/acme/m/blobs/uploads/", headers=auth)  # a session: its first bytes go to the store
        r = http.patch(start.headers["location"], content=data, headers=auth)
        assert r.status_code == 503 and _error(r)["code"] == "UNAVAILABLE", r.text
