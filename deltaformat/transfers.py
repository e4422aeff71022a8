"""Moving blobs: resumable, verified downloads into the cache, and uploads the way the registry takes them.

Downloads go to ``partial/<hex>.part`` with a running sha256; a cut connection resumes with
``Range`` (a server that ignores it makes the download start over) and the blob is renamed into
the cache only once its digest matched.

Uploads, as the OCI distribution spec allows:

* cross-repository mount, ``POST /v2/<name>/blobs/uploads/?mount=<digest>&from=<other>``, when
  the cache saw the blob in another repository of the same registry (pulled from or pushed to):
  201 means no byte is sent; a 202 opens an ordinary session the upload then uses;
* a small blob in one ``POST ?digest=`` with its bytes (our registry) or, once a registry
  answered that with 202 (distribution), POST for a session then ``PUT ?digest=`` with the bytes;
* a big blob (more than ``chunk_bytes``), or one the registry refused whole (413), in PATCH
  chunks of at least the ``OCI-Chunk-Min-Length`` the registry asks for, resuming a recorded
  session from the offset the registry reports, even in a later run.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable, Iterator
from enum import Enum
from pathlib import Path
from typing import Any

import httpx

from deltaformat.cache import Cache
from deltaformat.errors import CorruptBlobError, RegistryError, from_os_error
from deltaformat.oci import Descriptor
from deltaformat.transport import RetryableAnswer, Transport, retry_after

CHUNK_BYTES = 32 << 20  # blobs up to this size go in one request; bigger ones in chunks of it
READ_BYTES = 1 << 20
MAX_CHUNK_MIN = 1 << 30  # an OCI-Chunk-Min-Length above this is not honoured (it would be held in memory)
OCTETS = {"Content-Type": "application/octet-stream"}

Progress = Callable[[int], Any]


def _nothing(n: int) -> None:
    pass


class Outcome(Enum):
    """What uploading one blob came to."""

    PRESENT = "present"  # the repository had it
    MOUNTED = "mounted"  # mounted from another repository: no byte sent
    SENT = "sent"


# -- downloads ---------------------------------------------------------------------------


class PartialDownload:
    """A .part file being filled, with the running sha256 of what it holds."""

    def __init__(self, path: Path):
        self.path, self.offset, self.sha = path, 0, hashlib.sha256()

    @classmethod
    def resume(cls, path: Path, size: int) -> PartialDownload:
        """Pick up an existing .part (hashing what it holds), or start an empty one."""
        state = cls(path)
        if path.exists() and path.stat().st_size <= size:
            with open(path, "rb") as f:
                while chunk := f.read(READ_BYTES):
                    state.sha.update(chunk)
                    state.offset += len(chunk)
        else:
            path.write_bytes(b"")
        return state

    @contextlib.contextmanager
    def writing(self) -> Iterator[Callable[[bytes], None]]:
        """A function appending to the .part file, open for one attempt."""
        with open(self.path, "r+b") as f:
            f.seek(self.offset)
            f.truncate()

            def write(data: bytes) -> None:
                f.write(data)
                self.sha.update(data)
                self.offset += len(data)

            yield write

    def restart(self) -> None:
        self.path.write_bytes(b"")
        self.offset, self.sha = 0, hashlib.sha256()

    def digest(self) -> str:
        return "sha256:" + self.sha.hexdigest()


def download_blob(transport: Transport, cache: Cache, name: str, blob: Descriptor, advance: Progress = _nothing) -> Path:
    """Download one blob into the cache, resuming a partial download; verify it; return its path."""
    with cache.blob_lock(blob.digest):
        if cache.has_blob(blob.digest, blob.size):
            return cache.blob_path(blob.digest)
        part = cache.part_path(blob.digest)
        state = PartialDownload.resume(part, blob.size)
        advance(state.offset)
        try:
            transport.retry.run(f"blob {blob.digest} of {name}", lambda: _download_attempt(transport, name, blob, state, advance))
        except OSError as exc:  # the cache's disk (a full one: "no space left on device writing <part>")
            raise from_os_error(exc, part) from None
        if state.digest() != blob.digest:
            part.unlink(missing_ok=True)
            raise CorruptBlobError(f"blob {blob.digest} of {name} from {transport.url}: the bytes received have digest "
                                   f"{state.digest()}; the registry's copy is corrupt or was tampered with")
        return cache.commit_part(blob.digest)


def _download_attempt(transport: Transport, name: str, blob: Descriptor, state: PartialDownload, advance: Progress) -> None:
    if state.offset >= blob.size:
        return
    headers = {"Range": f"bytes={state.offset}-"} if state.offset else {}
    resp = transport.send("GET", f"/v2/{name}/blobs/{blob.digest}", stream=True, headers=headers)
    try:
        transport.check(resp, f"blob {blob.digest} of {name}", (200, 206))
        if resp.status_code == 200 and state.offset:
            advance(-state.offset)
            state.restart()  # the server ignored Range: start over rather than append the wrong bytes
        elif resp.status_code == 206 and not resp.headers.get("content-range", "").startswith(f"bytes {state.offset}-"):
            raise RetryableAnswer(f"blob {blob.digest}: server answered Range bytes={state.offset}- with "
                                  f"{resp.headers.get('content-range')!r}")
        with state.writing() as write:
            for chunk in resp.iter_bytes():  # as the network delivers: whatever arrives before a cut is kept
                if state.offset + len(chunk) > blob.size:
                    state.restart()
                    raise CorruptBlobError(f"blob {blob.digest} of {name}: the registry sent more than its {blob.size} bytes")
                write(chunk)
                advance(len(chunk))
    finally:
        resp.close()
    if state.offset < blob.size:
        raise RetryableAnswer(f"blob {blob.digest}: connection ended at byte {state.offset} of {blob.size}")


# -- uploads -----------------------------------------------------------------------------


class WholeTooLarge(Exception):
    """A 413 to a whole-blob upload: the registry takes this blob in chunks only."""


class Uploader:
    """Uploads to one registry, remembering what it learnt of it (thread-safe)."""

    def __init__(self, transport: Transport, cache: Cache, chunk_bytes: int = CHUNK_BYTES):
        self.transport, self.cache, self.chunk_bytes = transport, cache, chunk_bytes
        # Whether the registry takes a blob in one POST ?digest= with the body (ours does); a stock
        # distribution registry answers 202 and opens a session instead, so after the first such
        # answer every blob goes straight to POST + PUT (one request fewer, no body sent twice).
        self.monolithic = True
        self._lock = threading.Lock()

    def upload(self, name: str, digest: str, size: int, source: Path, advance: Progress = _nothing) -> Outcome:
        """Upload ``source`` as blob ``digest`` of ``name`` (the caller knows the repository lacks it)."""
        session = None
        for other in self.cache.blob_sources(self.transport.url, digest):
            if other == name:
                continue
            mounted, session = self.mount(name, digest, other)
            if mounted:
                advance(size)
                return Outcome.MOUNTED
            break  # one try: a registry that does not mount from one repository will not from another
        if size <= self.chunk_bytes:
            data = source.read_bytes()
            try:
                self.transport.retry.run(f"upload blob {digest}", lambda: self._whole_attempt(name, digest, data, session))
                advance(size)
                return Outcome.SENT
            except WholeTooLarge:
                session = None  # the registry takes it in chunks only: go on below
        if session is not None:
            self.cache.set_upload(self.transport.url, name, digest, session)
        sent = [0]
        self.transport.retry.run(f"upload blob {digest}",
                                 lambda: self._chunked_attempt(name, digest, size, source, advance, sent))
        self.cache.set_upload(self.transport.url, name, digest, None)
        return Outcome.SENT

    def mount(self, name: str, digest: str, other: str) -> tuple[bool, str | None]:
        """Ask the registry to mount ``digest`` from repository ``other``: (True, None) when it did;
        (False, session URL) when it opened an upload session instead; (False, None) on a refusal."""
        what = f"mount blob {digest} from {other}"
        resp = self.transport.retry.run(what, lambda: self._answer(self.transport.send(
            "POST", f"/v2/{name}/blobs/uploads/", params={"mount": digest, "from": other}), what))
        if resp.status_code == 201:
            return True, None
        if resp.status_code == 202 and resp.headers.get("location"):
            return False, upload_location(resp, what)
        return False, None

    def _answer(self, resp: httpx.Response, what: str) -> httpx.Response:
        """A mount's answer whatever it is (a registry that cannot mount may refuse it), retrying 5xx."""
        resp.close()
        if resp.status_code in (429, 500, 502, 503, 504):
            raise RetryableAnswer(f"{what}: HTTP {resp.status_code}", retry_after(resp))
        return resp

    def _whole_attempt(self, name: str, digest: str, data: bytes, session: str | None) -> None:
        """One try at uploading a small blob: monolithic POST where the registry takes it, else
        POST (session) + PUT ?digest= with the bytes, as the OCI distribution spec allows either."""
        what = f"upload blob {digest}"
        t = self.transport
        if session is None and self.monolithic:
            resp = t.check(t.send("POST", f"/v2/{name}/blobs/uploads/", params={"digest": digest}, content=data,
                                  headers=OCTETS), what, (201, 202, 413))
            if resp.status_code == 201:
                return
            if resp.status_code == 413:
                raise WholeTooLarge(what)
            with self._lock:
                self.monolithic = False  # 202: the body was ignored and a session opened; use it
            session = upload_location(resp, what)
        elif session is None:
            session = upload_location(t.check(t.send("POST", f"/v2/{name}/blobs/uploads/"), f"start upload of {digest}", (202,)), what)
        resp = t.check(t.send("PUT", with_digest(session, digest), content=data, headers=OCTETS), what, (201, 413))
        if resp.status_code == 413:
            raise WholeTooLarge(what)

    def _chunked_attempt(self, name: str, digest: str, size: int, source: Path, advance: Progress, sent: list[int]) -> None:
        """One try at a chunked upload: continue the recorded session from the registry's offset, or start one."""
        t, url = self.transport, self.transport.url
        location = self.cache.get_upload(url, name, digest)
        offset = self._upload_offset(location) if location else None
        chunk = self.chunk_bytes
        if location is None or offset is None:
            resp = t.check(t.send("POST", f"/v2/{name}/blobs/uploads/"), f"start upload of {digest}", (202,))
            location, offset = upload_location(resp, f"start upload of {digest}"), 0
            chunk = max(chunk, _chunk_min_length(resp))
            self.cache.set_upload(url, name, digest, location)
        advance(offset - sent[0])
        sent[0] = offset
        with open(source, "rb") as f:
            while offset < size:
                f.seek(offset)
                data = f.read(min(chunk, size - offset))
                resp = t.send("PATCH", location, content=data, headers={
                    **OCTETS, "Content-Range": f"{offset}-{offset + len(data) - 1}"})
                if resp.status_code == 416:  # the registry stands elsewhere (or another request holds the session):
                    # ask where it stands and go on from there, after the wait it asked for, if any
                    resp.close()
                    raise RetryableAnswer(f"upload of {digest}: registry is not at offset {offset}", retry_after(resp) or 0)
                t.check(resp, f"upload of {digest}", (202,))
                location = str(resp.url.join(resp.headers.get("location", location)))
                self.cache.set_upload(url, name, digest, location)
                offset += len(data)
                advance(len(data))
                sent[0] = offset
        t.check(t.send("PUT", with_digest(location, digest)), f"finish upload of {digest}", (201,))

    def _upload_offset(self, location: str) -> int | None:
        """Where a recorded upload session stands, or None when the registry no longer has it."""
        resp = self.transport.send("GET", location)
        if resp.status_code in (404, 400):
            return None
        self.transport.check(resp, "upload status", (204, 200))
        if "upload-offset" in resp.headers:
            return int(resp.headers["upload-offset"])
        end = resp.headers.get("range", "0-0").rpartition("-")[2]
        return int(end) + 1 if end not in ("", "0") else 0


def _chunk_min_length(resp: httpx.Response) -> int:
    """The registry's OCI-Chunk-Min-Length (0 when it sets none; capped: chunks are held in memory)."""
    value = resp.headers.get("oci-chunk-min-length", "")
    return min(int(value), MAX_CHUNK_MIN) if value.isdigit() else 0


def upload_location(resp: httpx.Response, what: str) -> str:
    """The absolute URL of the upload session a 202 opened (the spec's Location, often relative)."""
    location = resp.headers.get("location")
    if not location:
        raise RegistryError(f"{what}: the registry answered {resp.status_code} without a Location for the upload session")
    return str(resp.url.join(location))


def with_digest(location: str, digest: str) -> str:
    """The session URL with ``digest=`` added to its query: httpx's ``params=`` would replace the query,
    dropping the session state a registry keeps there (distribution's ``_state``; without it: 404)."""
    return str(httpx.URL(location).copy_merge_params({"digest": digest}))
