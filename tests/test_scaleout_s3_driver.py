"""The S3 blob driver on its own, against the real Ceph gateway: staged tails, stray and replaced parts,
the saved SHA-256 state and its fallback, multipart copies, presigned URLs."""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from urllib.parse import urlsplit

import httpx
import pytest

from paramdelta_dev.scaleout import Backends, sha256
from registry.storage import UploadState
from registry.storage import s3 as s3mod
from registry.storage.errors import UploadCorrupted
from registry.storage.s3 import ResumableSha256, S3Store

MiB = 1 << 20


def roundtrip(state: UploadState) -> UploadState:
    """What the registry does between requests: the state goes through the database as JSON."""
    return UploadState(state.size, json.loads(json.dumps(state.driver_state)))


@pytest.mark.skipif(not ResumableSha256.available(), reason="libcrypto not loadable")
def test_resumable_sha256_matches_hashlib_across_saves():
    rnd = random.Random(1)
    data = rnd.randbytes(300_000)
    h, pos = ResumableSha256(), 0
    for cut in sorted(rnd.sample(range(1, len(data)), 40)) + [len(data)]:
        h = ResumableSha256.load(json.loads(json.dumps(h.dump())))
        h.update(data[pos:cut])
        pos = cut
        assert h.hexdigest() == hashlib.sha256(data[:pos]).hexdigest()
    assert ResumableSha256().hexdigest() == hashlib.sha256(b"").hexdigest()


@pytest.fixture(scope="module")
def store(scale_backends: Backends) -> S3Store:
    from registry.storage import open_store

    st = open_store(scale_backends.settings(blob_store=f"s3://{scale_backends.bucket}/driver-{uuid.uuid4().hex[:8]}"))
    yield st
    st.close()


def write(st: S3Store, upload_id: str, state: UploadState, data: bytes, step: int = 4 * MiB) -> UploadState:
    w = st.upload_writer(upload_id, state)
    for i in range(0, len(data), step):
        w.write(data[i:i + step])
    return roundtrip(w.close())



@pytest.mark.services
def test_stray_bytes_of_an_unrecorded_request_never_count(store: S3Store):
    data = random.Random(2).randbytes(13 * MiB)
    uid = str(uuid.uuid4())
    state = roundtrip(store.begin_upload(uid))
    state = write(store, uid, state, data[:3 * MiB])  # staged only
    assert state.driver_state["tail"]["size"] == 3 * MiB and not state.driver_state.get("mpu")
    # A request that sent a whole part of garbage, then died before it was recorded...
    write(store, uid, state, b"\0" * (8 * MiB))
    # ...is replaced by the retry from the recorded state.
    state = write(store, uid, state, data[3 * MiB:])
    assert state.size == len(data) and len(state.driver_state["parts"]) == 2  # 3 + 4 MiB, then 6 MiB
    digest = store.upload_digest(uid, state)
    assert digest == sha256(data)
    store.commit_upload(uid, state, digest)
    assert b"".join(store.open_range(digest)) == data
    assert b"".join(store.open_range(digest, 5 * MiB - 3, 5 * MiB + 3)) == data[5 * MiB - 3:5 * MiB + 4]
    assert list(store._objects(store._upload_prefix(uid))) == []


@pytest.mark.services
def test_a_part_replaced_by_a_racing_request_is_refused_not_stored(store: S3Store):
    uid = str(uuid.uuid4())
    state = roundtrip(store.begin_upload(uid))
    mine, theirs = random.Random(3).randbytes(6 * MiB), random.Random(4).randbytes(6 * MiB)
    w1, w2 = store.upload_writer(uid, state), store.upload_writer(uid, state)
    w1.write(mine)  # part 1 = mine
    w2.write(theirs)  # part 1 = theirs, replacing it in the bucket
    recorded = roundtrip(w1.close())  # but the database records mine (the other request lost the race)
    w2.close()
    digest = store.upload_digest(uid, recorded)
    assert digest == sha256(mine)
    try:  # S3 refuses the replaced part (its ETag differs); Ceph keeps each upload of a part and completes the recorded one
        store.commit_upload(uid, recorded, digest)
    except UploadCorrupted:
        assert store.stat(digest) is None
        store.abort_upload(uid, recorded)
    else:
        assert b"".join(store.open_range(digest)) == mine  # never their bytes under my digest
    assert store.stat(sha256(theirs)) is None


@pytest.mark.services
def test_without_a_saved_hash_state_the_upload_is_read_back(store: S3Store, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(s3mod, "COPY_PART_BYTES", 5 * MiB)  # and the blob is copied in parts
    data = random.Random(5).randbytes(11 * MiB + 1)
    uid = str(uuid.uuid4())
    state = roundtrip(store.begin_upload(uid))
    state.driver_state["sha"] = None  # as on a host where libcrypto cannot be loaded
    state = write(store, uid, state, data[:7 * MiB])
    state = write(store, uid, state, data[7 * MiB:])
    assert state.driver_state["sha"] is None
    digest = store.upload_digest(uid, state)
    assert digest == sha256(data)
    store.commit_upload(uid, state, digest)  # the upload was already assembled by upload_digest
    assert store.stat(digest) == len(data)
    assert hashlib.sha256(b"".join(store.open_range(digest))).hexdigest() == digest.removeprefix("sha256:")
    assert (digest, len(data)) in {(b.digest, b.size) for b in store.blobs()}
    store.delete(digest)
    assert store.stat(digest) is None


@pytest.mark.services
def test_small_and_empty_blobs_and_presigned_urls(scale_backends: Backends, store: S3Store):
    for data in (b"", b"tiny blob"):
        uid = str(uuid.uuid4())
        state = write(store, uid, roundtrip(store.begin_upload(uid)), data)
        digest = store.upload_digest(uid, state)
        assert digest == sha256(data)
        store.commit_upload(uid, state, digest)
        assert store.stat(digest) == len(data)
        url = store.redirect_url(digest, len(data))
        assert httpx.get(url).content == data

    public = "http://storage.example.test:9000"
    settings = scale_backends.settings(blob_store=f"s3://{scale_backends.bucket}/{store.prefix}", s3_public_endpoint_url=public)
    from registry.storage import open_store

    signed_for_public = open_store(settings)
    url = signed_for_public.redirect_url(sha256(b"tiny blob"), 9)
    assert urlsplit(url).netloc == "storage.example.test:9000" and "X-Amz-Signature=" in url
    assert open_store(settings.model_copy(update={"s3_redirect": False})).redirect_url(sha256(b"x"), 1) is None
    with pytest.raises(ValueError, match="s3://BUCKET"):
        s3mod.parse_location("s3:///nobucket")
