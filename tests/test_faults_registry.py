"""kill -9 of ``paramdelta serve`` while pushes are uploading, then a restart on the same data and port.

The pushes go through a loopback proxy that slows what clients send (the server and the
clients are real; only the wire is slow), so the kill lands while chunked uploads are in
flight: requests mid-body, sessions half-done, bytes in the uploads folder. After the
restart: no stored blob's bytes differ from its digest, what was published before the
kill still pulls and verifies, running the interrupted pushes again succeeds, and
`paramdelta gc` removes what the killed uploads left that nothing can use any more.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

import deltaformat
from deltaformat import client
from deltaformat.artifact import blob_path, open_artifact
from deltaformat.cache import Cache
from deltaformat.client import RegistryClient, sha256_digest
from paramdelta_dev.loopback_proxy import LoopbackProxy
from paramdelta_dev.serve import RegistryServer

pytestmark = pytest.mark.usefixtures("client_env")

CHUNK = 64 << 10  # the pushes' chunk size: each blob (about 330 KiB) goes as several PATCHes
UP_BYTES_PER_SECOND = 256 << 10  # per connection, while the kill is being set up
WHOLE = 32 << 20  # the client's default: blobs up to this size go in one request
IN_FLIGHT = 3  # pushes the kill interrupts


class SlowProxy(LoopbackProxy):
    """A loopback TCP proxy to ``port`` that paces what clients send, until ``unthrottle``.

    It keeps listening while the server behind it is down (connections then close at once),
    so clients see a server restart, not a new address.
    """

    def __init__(self, port: int, rate: int):
        self.rate = rate
        super().__init__(port)

    def unthrottle(self) -> None:
        self.rate = 0

    def on_data(self, way: str, data: bytes) -> None:
        if way == "up" and self.rate:
            time.sleep(len(data) / self.rate)


class Models:
    """A bf16 base of 8 tensors and post-trained models of it: each delta is 8 blobs of about 330 KiB, its own."""

    def __init__(self, root: Path):
        import torch
        from safetensors.torch import save_file

        self.root, self.posts = root, 0
        self._torch, self._save = torch, save_file
        g = torch.Generator().manual_seed(7)
        self.state = {f"layers.{i}.weight": (torch.randn(512, 1024, generator=g) * 0.02).to(torch.bfloat16) for i in range(8)}
        self.base = self._write("base", self.state)

    def _write(self, name: str, state: dict) -> Path:
        folder = self.root / name
        folder.mkdir(parents=True)
        self._save(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return folder

    def artifact(self, name: str, out: Path) -> Path:
        """A delta published as ``name:1.0`` from a post model of its own (no blob shared with another)."""
        self.posts += 1
        g = self._torch.Generator().manual_seed(100 + self.posts)
        post = {k: (v.float() + self._torch.randn(v.shape, generator=g) * 2e-4).to(self._torch.bfloat16)
                for k, v in self.state.items()}
        deltaformat.extract(self.base, self._write(f"post-{self.posts}", post), out, name=name, version="1.0",
                            description="kill -9 test", quiet=True)
        return out


def stored_blobs_that_do_not_match(data: Path) -> list[str]:
    """Every committed blob file whose sha256 is not its name: what a reader could be handed."""
    bad = []
    for path in (data / "blobs" / "blobs" / "sha256").glob("*/*"):
        if hashlib.sha256(path.read_bytes()).hexdigest() != path.name:
            bad.append(path.name)
    return bad


def session_bytes(data: Path) -> int:
    """Bytes in upload sessions' files (not monolithic uploads' put-* files): a chunked upload is under way."""
    return sum(p.stat().st_size for p in (data / "blobs" / "uploads").iterdir() if p.is_file() and not p.name.startswith("put-"))


def monolithic_uploads(data: Path) -> int:
    return sum(1 for p in (data / "blobs" / "uploads").iterdir() if p.name.startswith("put-"))


def wait_for(condition, what: str, seconds: float = 60.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def pull_and_verify(url: str, name: str, expected_manifest: bytes, cache: Path) -> None:
    with RegistryClient(url, cache=Cache(cache)) as c:  # a fresh cache: the bytes come from the registry
        digest, oci = c.resolve(name, "1.0")
        art = c.fetch(name, digest, oci, quiet=True)
    deltaformat.verify(art, quiet=True)
    assert art.manifest_bytes == expected_manifest, name


def upload_blobs_once(url: str, token: str, name: str, folder: Path, chunk_bytes: int) -> None:
    """A push's blob uploads as client.push makes them (two at a time; chunked when bigger than ``chunk_bytes``),
    but with no retry: the kill ends it, as it ends a push whose user gives up; its sessions stay recorded in the cache."""
    art = open_artifact(folder)
    blobs = [(sha256_digest(art.manifest_bytes), len(art.manifest_bytes), folder / "manifest.json")]
    blobs += [(d, blob_path(art.blob_dir, d).stat().st_size, blob_path(art.blob_dir, d)) for d in art.manifest.blob_digests()]
    with RegistryClient(url, token, retries=0, workers=2, chunk_bytes=chunk_bytes) as c:
        c.parallel(lambda b: c.upload_blob(name, *b, present=False), blobs)


@dataclass
class Crash:
    """A registry killed with SIGKILL while pushes were uploading, then started again on the same data and port."""

    server: RegistryServer
    proxy: SlowProxy
    token: str
    kept: Path  # published before the kill
    interrupted: dict[str, Path]  # repository -> the artifact whose push the kill interrupted
    bad_blobs_at_kill: list[str]

    @property
    def data(self) -> Path:
        return self.server.data


@pytest.fixture
def crash(tmp_path: Path) -> Iterator[Crash]:
    server = RegistryServer(tmp_path / "data").start()
    proxy = SlowProxy(server.port, UP_BYTES_PER_SECOND)
    try:
        models = Models(tmp_path / "models")
        token = server.token("acme", "push")
        kept = models.artifact("acme/kept", tmp_path / "kept")
        client.push(kept, f"{server.host}/acme/kept:1.0", token=token, quiet=True)
        interrupted = {f"acme/inflight-{k}": models.artifact(f"acme/inflight-{k}", tmp_path / f"inflight-{k}")
                       for k in range(IN_FLIGHT)}
        # The last push sends each blob whole (a monolithic POST: a temp file, no session); the others in chunks.
        sizes = [CHUNK] * (IN_FLIGHT - 1) + [WHOLE]
        uploads = [threading.Thread(target=_quietly, args=(upload_blobs_once, f"http://{proxy.host}", token, name, folder, size),
                                    daemon=True) for (name, folder), size in zip(interrupted.items(), sizes)]
        for th in uploads:
            th.start()
        # Killed once a chunk is in and more are on the way, and a whole blob is arriving: requests mid-body,
        # sessions half-done, a monolithic upload's temp file.
        wait_for(lambda: session_bytes(server.data) > 0 and monolithic_uploads(server.data) > 0, "uploads under way")
        server.kill()  # SIGKILL: no shutdown handler runs
        bad = stored_blobs_that_do_not_match(server.data)
        for th in uploads:
            th.join(60)
        server.start()  # same data, same port: the clients' recorded sessions point at it again
        proxy.unthrottle()
        yield Crash(server, proxy, token, kept, interrupted, bad)
    finally:
        proxy.close()
        server.stop()


def _quietly(fn, *args) -> None:  # noqa: ANN001  (the kill makes these fail; that is the point)
    try:
        fn(*args)
    except Exception:  # noqa: BLE001
        pass


def test_after_a_kill_9_mid_push_what_was_published_is_intact_and_the_push_succeeds_when_run_again(crash: Crash,
                                                                                                   tmp_path: Path):
    assert crash.bad_blobs_at_kill == []  # no blob file whose bytes are not its digest, even right after the kill
    pull_and_verify(crash.server.url, "acme/kept", (crash.kept / "manifest.json").read_bytes(), tmp_path / "cache-kept")

    for name, folder in crash.interrupted.items():  # the user runs the push again, with the sessions it recorded
        client.push(folder, f"{crash.proxy.host}/{name}:1.0", token=crash.token, quiet=True, workers=2, chunk_bytes=CHUNK)
    for name, folder in crash.interrupted.items():
        pull_and_verify(crash.server.url, name, (folder / "manifest.json").read_bytes(), tmp_path / f"cache-{name[5:]}")
    assert stored_blobs_that_do_not_match(crash.data) == []


def test_gc_after_the_restart_removes_what_the_killed_uploads_left_behind(crash: Crash):
    from registry.db import Database
    from registry.db.models import UploadSession
    from registry.settings import Settings

    # The restarted server is idle: whatever its uploads folder holds was left by the killed one.
    gc = subprocess.run([sys.executable, "-m", "deltaformat.cli", "gc", "--data", str(crash.data), "--grace", "0", "--json"],
                        capture_output=True, text=True, timeout=120)
    assert gc.returncode == 0, gc.stderr
    db = Database(Settings(data=crash.data).resolved_database_url())
    try:
        with db.session() as s:
            sessions = set(s.scalars(select(UploadSession.id)))  # resumable: a client may come back to them
    finally:
        db.dispose()
    # What no session refers to (a monolithic upload's temp file, a session file whose row was never written,
    # a copy made for a commit that never happened) can never be used again.
    orphans = sorted(p.name for p in (crash.data / "blobs" / "uploads").iterdir() if p.name.split(".")[0] not in sessions)
    assert orphans == [], f"gc kept files of killed uploads: {orphans}; its report: {gc.stdout.strip()}"
