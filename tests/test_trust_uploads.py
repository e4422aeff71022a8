"""Trust (issue #10), uploads on the embedded default (SQLite + a blob folder), against a real server:

* a hostile pusher cannot change another namespace's blob through an upload session
  (a PATCH that holds its body back while the same session is completed with genuine bytes);
* one request at a time per session, one completion per session;
* per-token quotas on open sessions and their bytes, a short idle expiry that ``paramdelta gc`` honours;
* a full disk (a real tmpfs) answers a clean 507 and frees the upload's bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from deltaformat import client
from deltaformat.artifact import blob_path, open_artifact
from paramdelta_dev.artifacts import Artifacts
from paramdelta_dev.held import HeldRequest, UploadRows
from paramdelta_dev.renamed import renamed
from paramdelta_dev.serve import RegistryServer
from registry.db.models import UploadSession

pytestmark = pytest.mark.usefixtures("client_env")
KiB, MiB = 1 << 10, 1 << 20


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def upload_rows(srv: RegistryServer) -> UploadRows:
    return UploadRows(f"sqlite:///{srv.data / 'registry.db'}")


@pytest.fixture
def sessions(registry_server: RegistryServer) -> Iterator[UploadRows]:
    s = upload_rows(registry_server)
    yield s
    s.close()


def start_session(srv: RegistryServer, name: str, token: str) -> tuple[str, str]:
    """(location path, upload id) of a new upload session."""
    resp = httpx.post(f"{srv.url}/v2/{name}/blobs/uploads/", headers=bearer(token))
    assert resp.status_code == 202, resp.text
    return resp.headers["location"], resp.headers["docker-upload-uuid"]


def error_of(resp: httpx.Response) -> dict:
    return resp.json()["errors"][0]


def uploads_folder(srv: RegistryServer) -> Path:
    return srv.data / "blobs" / "uploads"


def victim_blob(srv: RegistryServer, artifacts: Artifacts, namespace: str, tmp_path: Path) -> tuple[str, str, bytes]:
    """The victim's pushed version (its reference), and its largest blob's digest and bytes (public: anonymous pull)."""
    ref = f"{srv.host}/{namespace}/tiny:1.0"
    client.push(renamed(artifacts.delta, f"{namespace}/tiny", "1.0", tmp_path / "named"), ref, token=srv.token(namespace, "push"))
    art = open_artifact(artifacts.delta)
    sizes = art.manifest.blob_sizes()
    digest = max(sizes, key=sizes.get)
    return ref, digest, blob_path(art.blob_dir, digest).read_bytes()


def assert_victim_intact(srv: RegistryServer, ref: str, digest: str, tmp_path: Path, tag: str) -> None:
    stored = srv.blob_file(digest).read_bytes()
    assert sha256(stored) == digest, "the stored blob no longer matches its digest"
    served = httpx.get(f"{srv.url}/v2/{ref.split('/', 1)[1].split(':')[0]}/blobs/{digest}")
    assert served.status_code == 200 and sha256(served.content) == digest
    client.pull(ref, tmp_path / tag)  # checks every blob's digest and the artifact


# -- item 1: a committed blob is out of reach of every upload writer ------------------------


def test_a_held_patch_cannot_poison_another_namespaces_blob(registry_server: RegistryServer, artifacts: Artifacts,
                                                           sessions: UploadRows, tmp_path: Path):
    srv = registry_server
    ref, digest, genuine = victim_blob(srv, artifacts, "victim1", tmp_path)
    evil = srv.token("evil1", "push")
    poison = b"\0" * len(genuine)

    # The attack as observed on main: a PATCH holds its body back; the same session is completed with the
    # victim's genuine bytes (the digest check passes); then the held bytes arrive.
    location, upload_id = start_session(srv, "evil1/x", evil)
    held = HeldRequest(srv, "PATCH", location, evil, len(poison), Content_Range=f"0-{len(poison) - 1}")
    sessions.wait_until_held(upload_id)
    put = httpx.put(srv.url + location, params={"digest": digest}, content=genuine, headers=bearer(evil))
    assert put.status_code == 416 and "busy" in error_of(put)["message"]  # one request at a time per upload
    assert held.send_body(poison)[0] == 202  # the poison went into evil's own upload, nowhere else
    assert_victim_intact(srv, ref, digest, tmp_path, "after-busy")

    # Even when the holder stalls past its lease and the upload is completed under it, its bytes reach no blob.
    location, upload_id = start_session(srv, "evil1/y", evil)
    held = HeldRequest(srv, "PATCH", location, evil, len(poison), Content_Range=f"0-{len(poison) - 1}")
    sessions.wait_until_held(upload_id)
    sessions.lapse_lease(upload_id)
    put = httpx.put(srv.url + location, params={"digest": digest}, content=genuine, headers=bearer(evil))
    assert put.status_code == 201, put.text
    status, answer = held.send_body(poison)
    assert status == 404 and answer["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"
    assert_victim_intact(srv, ref, digest, tmp_path, "after-takeover")
    assert not [p for p in uploads_folder(srv).iterdir() if p.name.startswith(upload_id)]

    # The victim pushes again (a new version of the same artifact): the registry has the blob, intact.
    again = client.push(renamed(artifacts.delta, "victim1/tiny", "1.1", tmp_path / "named"), f"{srv.host}/victim1/tiny:1.1",
                        token=srv.token("victim1", "push"))
    assert again.uploaded == 1  # only the new version's manifest.json: its blobs are all there
    client.pull(f"{srv.host}/victim1/tiny:1.1", tmp_path / "again")


def test_a_second_request_on_a_busy_upload_is_refused(registry_server: RegistryServer, sessions: UploadRows):
    srv, token = registry_server, registry_server.token("busy1", "push")
    data = random.Random(3).randbytes(200 * KiB)
    location, upload_id = start_session(srv, "busy1/x", token)
    held = HeldRequest(srv, "PATCH", location, token, 100 * KiB, Content_Range=f"0-{100 * KiB - 1}")
    sessions.wait_until_held(upload_id)

    second = httpx.patch(srv.url + location, content=data[:100 * KiB], headers={**bearer(token), "Content-Range": f"0-{100 * KiB - 1}"})
    assert second.status_code == 416 and error_of(second)["code"] == "BLOB_UPLOAD_INVALID"
    assert "busy" in error_of(second)["message"] and second.headers["upload-offset"] == "0"
    assert held.send_body(data[:100 * KiB])[0] == 202

    # Once the first request has ended the upload goes on from where it stands.
    rest = httpx.patch(srv.url + location, content=data[100 * KiB:], headers={**bearer(token), "Content-Range": f"{100 * KiB}-{len(data) - 1}"})
    assert rest.status_code == 202 and rest.headers["upload-offset"] == str(len(data))
    done = httpx.put(srv.url + location, params={"digest": sha256(data)}, headers=bearer(token))
    assert done.status_code == 201 and sha256(srv.blob_file(sha256(data)).read_bytes()) == sha256(data)


def test_an_upload_completes_once(registry_server: RegistryServer, sessions: UploadRows):
    srv, token = registry_server, registry_server.token("once1", "push")
    data = random.Random(4).randbytes(100 * KiB)
    location, upload_id = start_session(srv, "once1/x", token)
    assert httpx.put(srv.url + location, params={"digest": sha256(data)}, content=data, headers=bearer(token)).status_code == 201
    twice = httpx.put(srv.url + location, params={"digest": sha256(data)}, content=data, headers=bearer(token))
    assert twice.status_code == 404 and error_of(twice)["code"] == "BLOB_UPLOAD_UNKNOWN"

    # A PUT that began before the completion (and stalled past its lease) completes nothing either.
    other = random.Random(5).randbytes(100 * KiB)
    location, upload_id = start_session(srv, "once1/y", token)
    held = HeldRequest(srv, "PUT", f"{location}?digest={sha256(other)}", token, len(other))
    sessions.wait_until_held(upload_id)
    sessions.lapse_lease(upload_id)
    assert httpx.put(srv.url + location, params={"digest": sha256(data)}, content=data, headers=bearer(token)).status_code == 201
    status, answer = held.send_body(other)
    assert status == 404 and answer["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"
    assert httpx.head(f"{srv.url}/v2/once1/y/blobs/{sha256(other)}").status_code == 404
    assert sha256(srv.blob_file(sha256(data)).read_bytes()) == sha256(data)


# -- item 6: quotas, expiry, a full disk -------------------------------------------------


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * KiB
    raise AssertionError("no VmRSS")


def test_stalled_bodies_hold_a_bounded_amount_of_server_memory(tmp_path: Path):
    """48 PATCHes each send just under one write's worth of body and stall: what the server holds for them is
    bounded by its gathered-bytes cap (64 MiB), not 48 times a write (~190 MiB as it was)."""
    srv = RegistryServer(tmp_path / "data").start()
    held: list[HeldRequest] = []
    try:
        token = srv.token("stall", "push")
        part = 4 * MiB - 64 * KiB  # under FLUSH_BYTES: gathered, not yet written, when the client stops sending
        body = random.randbytes(part)
        before = rss_bytes(srv.proc.pid)
        for i in range(48):
            location, _ = start_session(srv, f"stall/r{i % 4}", token)
            req = HeldRequest(srv, "PATCH", location, token, part + 1, Content_Range=f"0-{part}")
            req.sock.sendall(body)  # all but the last byte, then nothing
            held.append(req)
        deadline = time.monotonic() + 20  # until the server has written what the cap makes it write (bounded wait)
        while sum(p.stat().st_size for p in uploads_folder(srv).iterdir()) < 48 * part - 64 * MiB - 4 * MiB:
            if time.monotonic() > deadline:
                break  # it holds them in memory instead: the assertion below says how much
            time.sleep(0.1)
        time.sleep(0.5)
        grown = rss_bytes(srv.proc.pid) - before
        assert grown < 64 * MiB + 48 * MiB, f"server memory grew by {grown / MiB:.0f} MiB for 48 stalled bodies"
        assert httpx.get(f"{srv.url}/healthz").status_code == 200
    finally:
        for req in held:
            req.sock.close()
        srv.stop()


@pytest.fixture
def quota_server(tmp_path: Path) -> Iterator[RegistryServer]:
    srv = RegistryServer(tmp_path / "data")
    srv.env.update(PARAMDELTA_UPLOAD_MAX_SESSIONS="3", PARAMDELTA_UPLOAD_MAX_BYTES=str(1 * MiB))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def test_open_sessions_and_their_bytes_are_limited_per_token(quota_server: RegistryServer):
    srv = quota_server
    token, colleague = srv.token("quota", "push"), srv.token("quota", "push")
    locations = [start_session(srv, "quota/x", token)[0] for _ in range(3)]
    fourth = httpx.post(f"{srv.url}/v2/quota/x/blobs/uploads/", headers=bearer(token))
    assert fourth.status_code == 429 and error_of(fourth)["code"] == "TOOMANYREQUESTS"
    assert "PARAMDELTA_UPLOAD_MAX_SESSIONS" in error_of(fourth)["message"]
    start_session(srv, "quota/x", colleague)  # the limit is per token
    assert httpx.delete(srv.url + locations.pop(), headers=bearer(token)).status_code == 204
    locations.append(start_session(srv, "quota/x", token)[0])  # a cancelled session frees its place

    def patch(location: str, data: bytes) -> httpx.Response:
        return httpx.patch(srv.url + location, content=data, headers={**bearer(token), "Content-Range": f"0-{len(data) - 1}"})

    first = random.Random(6).randbytes(600 * KiB)
    assert patch(locations[0], first).status_code == 202
    over = patch(locations[1], first)  # 1.2 MiB held by one token: refused before a byte is stored
    assert over.status_code == 429 and "PARAMDELTA_UPLOAD_MAX_BYTES" in error_of(over)["message"]
    assert httpx.get(srv.url + locations[1], headers=bearer(token)).headers["upload-offset"] == "0"
    alone = patch(locations[2], random.Random(7).randbytes(MiB + 1))  # more than any one upload may hold: no retry helps
    assert alone.status_code == 413 and "PARAMDELTA_UPLOAD_MAX_BYTES" in error_of(alone)["message"]

    # Completing an upload gives its bytes back.
    assert httpx.put(srv.url + locations[0], params={"digest": sha256(first)}, headers=bearer(token)).status_code == 201
    assert patch(locations[1], first).status_code == 202


def test_whole_blob_uploads_are_limited_per_token_like_sessions(quota_server: RegistryServer):
    """POST ?digest= uploads have no session row, yet count against the same per-token quotas (3 at once, 1 MiB)."""
    srv = quota_server
    token, colleague = srv.token("whole", "push"), srv.token("whole", "push")
    blobs = [random.Random(20 + i).randbytes(200 * KiB) for i in range(4)]

    def held_post(data: bytes, who: str = token) -> HeldRequest:
        return HeldRequest(srv, "POST", f"/v2/whole/x/blobs/uploads/?digest={sha256(data)}", who, len(data))

    def wait_for_temp_files(count: int) -> None:
        deadline = time.monotonic() + 30  # until the server has opened that many whole-blob uploads (bounded wait)
        while len(list(uploads_folder(srv).glob("put-*"))) < count:
            assert time.monotonic() < deadline, f"the server did not open {count} whole-blob uploads"
            time.sleep(0.02)

    held = [held_post(b) for b in blobs[:3]]
    wait_for_temp_files(3)
    fourth = httpx.post(f"{srv.url}/v2/whole/x/blobs/uploads/", params={"digest": sha256(blobs[3])},
                        content=blobs[3], headers=bearer(token))
    assert fourth.status_code == 429 and "PARAMDELTA_UPLOAD_MAX_SESSIONS" in error_of(fourth)["message"]
    other = httpx.post(f"{srv.url}/v2/whole/x/blobs/uploads/", params={"digest": sha256(blobs[3])},
                       content=blobs[3], headers=bearer(colleague))
    assert other.status_code == 201  # the limit is per token
    for req, data in zip(held, blobs):
        assert req.send_body(data)[0] == 201
    big = random.Random(30).randbytes(MiB + 1)  # more than the token may upload at once: 413, no retry helps
    too_big = httpx.post(f"{srv.url}/v2/whole/x/blobs/uploads/", params={"digest": sha256(big)}, content=big, headers=bearer(token))
    assert too_big.status_code == 413 and "PARAMDELTA_UPLOAD_MAX_BYTES" in error_of(too_big)["message"]

    halves = [random.Random(40 + i).randbytes(600 * KiB) for i in range(2)]
    first = held_post(halves[0])
    wait_for_temp_files(1)
    second = httpx.post(f"{srv.url}/v2/whole/x/blobs/uploads/", params={"digest": sha256(halves[1])},
                        content=halves[1], headers=bearer(token))
    assert second.status_code == 429 and "PARAMDELTA_UPLOAD_MAX_BYTES" in error_of(second)["message"]
    assert first.send_body(halves[0])[0] == 201
    again = httpx.post(f"{srv.url}/v2/whole/x/blobs/uploads/", params={"digest": sha256(halves[1])},
                       content=halves[1], headers=bearer(token))
    assert again.status_code == 201  # an ended upload gives its room back


def test_a_body_of_unannounced_length_reserves_all_the_room_left(quota_server: RegistryServer):
    srv = quota_server
    token = srv.token("stream", "push")
    (first, first_id), (second, _) = start_session(srv, "stream/x", token), start_session(srv, "stream/x", token)
    sessions = upload_rows(srv)
    try:
        held = HeldRequest(srv, "PATCH", first, token, None)  # chunked: it may send up to the whole quota
        sessions.wait_until_held(first_id)
        one = httpx.patch(srv.url + second, content=b"x", headers={**bearer(token), "Content-Range": "0-0"})
        assert one.status_code == 429 and "PARAMDELTA_UPLOAD_MAX_BYTES" in error_of(one)["message"]
        data = random.Random(12).randbytes(100 * KiB)
        assert held.send_body(data)[0] == 202  # it ended: only the bytes it sent count now
        assert httpx.patch(srv.url + second, content=b"x", headers={**bearer(token), "Content-Range": "0-0"}).status_code == 202
        assert httpx.get(srv.url + first, headers=bearer(token)).headers["upload-offset"] == str(len(data))
    finally:
        sessions.close()


def test_gc_purges_sessions_idle_for_two_hours(tmp_path: Path):
    srv = RegistryServer(tmp_path / "data").start()
    try:
        token = srv.token("idle", "push")
        location, upload_id = start_session(srv, "idle/x", token)
        data = random.Random(8).randbytes(100 * KiB)
        assert httpx.patch(srv.url + location, content=data, headers={**bearer(token), "Content-Range": f"0-{len(data) - 1}"}).status_code == 202
        assert (uploads_folder(srv) / upload_id).stat().st_size == len(data)
        rows = upload_rows(srv)
        try:
            with rows.db.session() as s:  # as if its last request were two hours ago
                row = s.get(UploadSession, upload_id)
                row.expires_at -= timedelta(hours=2)
        finally:
            rows.close()

        out = subprocess.run([sys.executable, "-m", "deltaformat.cli", "gc", "--data", str(srv.data), "--json"],
                             capture_output=True, text=True, timeout=120,
                             env={k: v for k, v in os.environ.items() if not k.startswith("PARAMDELTA_")})
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)
        assert report["uploads_purged"] == 1 and report["upload_bytes_purged"] == len(data)
        assert not (uploads_folder(srv) / upload_id).exists()
        gone = httpx.get(srv.url + location, headers=bearer(token))
        assert gone.status_code == 404 and error_of(gone)["code"] == "BLOB_UPLOAD_UNKNOWN"
    finally:
        srv.stop()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs: a disk that really fills up."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_answers_507_and_frees_the_uploads_bytes(small_disk: Path):
    srv = RegistryServer(small_disk).start()  # its log goes next to the mount, not onto the small disk
    try:
        token = srv.token("full", "push")
        big = random.Random(9).randbytes(12 * MiB)

        whole = httpx.post(f"{srv.url}/v2/full/x/blobs/uploads/", params={"digest": sha256(big)}, content=big,
                           headers=bearer(token), timeout=60)
        assert whole.status_code == 507 and "registry storage is full" in error_of(whole)["message"]
        assert list(uploads_folder(srv).iterdir()) == []

        location, upload_id = start_session(srv, "full/x", token)
        chunked = httpx.patch(srv.url + location, content=big, headers={**bearer(token), "Content-Range": f"0-{len(big) - 1}"},
                              timeout=60)
        assert chunked.status_code == 507 and "registry storage is full" in error_of(chunked)["message"]
        assert list(uploads_folder(srv).iterdir()) == []  # the session's partial bytes are freed now, not at expiry
        assert httpx.get(srv.url + location, headers=bearer(token)).status_code == 404
        assert "Traceback" not in srv.log_text()

        small = random.Random(10).randbytes(MiB)
        assert httpx.post(f"{srv.url}/v2/full/x/blobs/uploads/", params={"digest": sha256(small)}, content=small,
                          headers=bearer(token)).status_code == 201
        location, _ = start_session(srv, "full/x", token)
        other = random.Random(11).randbytes(MiB)
        assert httpx.put(srv.url + location, params={"digest": sha256(other)}, content=other, headers=bearer(token)).status_code == 201
        assert httpx.get(f"{srv.url}/v2/full/x/blobs/{sha256(other)}").content == other

        # A session's commit copies its bytes into a fresh file (so that no writer can reach the blob):
        # when the disk cannot hold that copy, the same clean answer, and the upload's bytes are freed.
        location, _ = start_session(srv, "full/x", token)
        half = random.Random(12).randbytes(3 * MiB)  # fits beside the 2 MiB stored; a copy of it does not
        assert httpx.patch(srv.url + location, content=half, headers={**bearer(token), "Content-Range": f"0-{len(half) - 1}"},
                           timeout=60).status_code == 202
        sealed = httpx.put(srv.url + location, params={"digest": sha256(half)}, headers=bearer(token), timeout=60)
        assert sealed.status_code == 507 and "registry storage is full" in error_of(sealed)["message"]
        assert list(uploads_folder(srv).iterdir()) == []
        assert "Traceback" not in srv.log_text()
    finally:
        srv.stop()
