"""Blob uploads: monolithic or chunked and resumable, verified before anything is visible.

    POST   start a session (or upload a whole blob with ?digest=: no session for that one)
    PATCH  append bytes at the session's offset (Content-Range must continue it, else 416)
    PUT    append the last bytes (optional), verify ?digest=, commit
    GET    where the session stands (the resume offset)
    DELETE cancel

Session state (offset, the driver's notes) is in the database after every request,
so any replica can take the next one. When a client drops mid-request, the bytes
that arrived are kept and the offset says so: the client resumes from there.
A monolithic POST cannot be resumed, so it records nothing until its bytes are in
(a temp file or the driver's own upload, hashed as they arrive) and verified; then
one transaction makes the blob visible. A failed one leaves nothing behind.
A blob becomes visible only after its sha256 matches the digest the client named.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta

import anyio
from anyio import to_thread
from sqlalchemy import select, update

from registry.blobs import check_digest
from registry.db import Database, utcnow
from registry.db.models import UploadSession
from registry.db.queries import record_blob
from registry.errors import BlobUploadInvalid, BlobUploadUnknown, ClientGone, DigestInvalid, RangeNotSatisfiable, TooLarge
from registry.settings import Settings
from registry.gc import lock_digest
from registry.storage import BlobStore, BlobWriter, UploadState

log = logging.getLogger("paramdelta.registry")

FLUSH_BYTES = 4 << 20  # body bytes gathered before one write in a worker thread
PURGE_EVERY_SECONDS = 300
_CONTENT_RANGE = re.compile(r"^(?:bytes )?(\d+)-(\d+)(?:/(\d+|\*))?$")


@dataclass
class UploadStatus:
    """An upload session as the client sees it."""

    id: str
    name: str
    size: int


@dataclass
class _Session:
    id: str
    name: str
    state: UploadState


class Uploads:
    """Upload sessions over a blob driver, with their state in the database."""

    def __init__(self, db: Database, store: BlobStore, settings: Settings):
        self.db = db
        self.store = store
        self.ttl = timedelta(seconds=settings.upload_ttl_seconds)
        self.max_blob_bytes = settings.max_blob_bytes
        self._last_purge = 0.0

    # -- synchronous steps (run in worker threads by the async entry points) --------

    def start(self, name: str) -> UploadStatus:
        """Open an empty upload session in repository ``name``."""
        if time.monotonic() - self._last_purge > PURGE_EVERY_SECONDS:
            self.purge_expired()
        upload_id = str(uuid.uuid4())
        state = self.store.begin_upload(upload_id)
        with self.db.session() as s:
            s.add(UploadSession(id=upload_id, repository=name, size=state.size, driver_state=json.dumps(state.driver_state),
                                created_at=utcnow(), expires_at=utcnow() + self.ttl))
        return UploadStatus(upload_id, name, state.size)

    def status(self, name: str, upload_id: str) -> UploadStatus:
        sess = self._load(name, upload_id)
        return UploadStatus(sess.id, name, sess.state.size)

    def cancel(self, name: str, upload_id: str) -> None:
        self._drop(self._load(name, upload_id))

    def purge_expired(self) -> int:
        """Drop upload sessions idle past their expiry; returns how many."""
        self._last_purge = time.monotonic()
        with self.db.session() as s:
            expired = list(s.scalars(select(UploadSession).where(UploadSession.expires_at < utcnow())))
        for row in expired:
            self._drop(_Session(row.id, row.repository, UploadState(row.size, json.loads(row.driver_state))))
        if expired:
            log.info("purged %d expired upload session(s)", len(expired))
        return len(expired)

    def _load(self, name: str, upload_id: str) -> _Session:
        with self.db.session() as s:
            row = s.get(UploadSession, upload_id)
        if row is None or row.repository != name:
            raise BlobUploadUnknown(f"upload {upload_id} is not in progress in {name}")
        sess = _Session(row.id, name, UploadState(row.size, json.loads(row.driver_state)))
        if row.expires_at < utcnow():
            self._drop(sess)
            raise BlobUploadUnknown(f"upload {upload_id} expired; start a new one")
        return sess

    def _save(self, sess: _Session, new: UploadState) -> None:
        """Record progress, unless another request moved the session meanwhile."""
        with self.db.session() as s:
            done = s.execute(
                update(UploadSession)
                .where(UploadSession.id == sess.id, UploadSession.size == sess.state.size)
                .values(size=new.size, driver_state=json.dumps(new.driver_state), expires_at=utcnow() + self.ttl)
            ).rowcount
        if not done:
            raise RangeNotSatisfiable(f"upload {sess.id} was changed by a concurrent request; ask where it stands and resume")
        sess.state = new

    def _drop(self, sess: _Session) -> None:
        self.store.abort_upload(sess.id, sess.state)
        with self.db.session() as s:
            row = s.get(UploadSession, sess.id)
            if row is not None:
                s.delete(row)

    def _commit(self, sess: _Session, digest: str) -> None:
        self.store.prepare_commit(sess.id, sess.state)  # durable before the transaction, which then holds its lock briefly
        with self.db.session() as s:
            lock_digest(s, digest)  # garbage collection deletes a blob only under this lock (registry.gc)
            self.store.commit_upload(sess.id, sess.state, digest)
            record_blob(s, sess.name, digest, sess.state.size)  # linked, and its GC grace period starts over
            row = s.get(UploadSession, sess.id)
            if row is not None:
                s.delete(row)

    # -- async entry points (they read the request body) ----------------------------

    async def append(self, name: str, upload_id: str, body: AsyncIterator[bytes], content_range: str | None) -> UploadStatus:
        """PATCH: append the body at the session's offset."""
        sess = await to_thread.run_sync(self._load, name, upload_id)
        await self._receive(sess, body, content_range)
        return UploadStatus(sess.id, name, sess.state.size)

    async def finish(self, name: str, upload_id: str, digest: str, body: AsyncIterator[bytes],
                     content_range: str | None = None) -> str:
        """PUT: append the body (if any), check the digest, make the blob visible."""
        check_digest(digest)
        sess = await to_thread.run_sync(self._load, name, upload_id)
        sha = await self._receive(sess, body, content_range)
        actual = "sha256:" + sha.hexdigest() if sha else await to_thread.run_sync(self.store.upload_digest, sess.id, sess.state)
        if actual != digest:
            await to_thread.run_sync(self._drop, sess)
            raise DigestInvalid(f"uploaded bytes have digest {actual}, not {digest}; nothing was stored",
                                detail={"expected": digest, "actual": actual, "size": sess.state.size})
        await to_thread.run_sync(self._commit, sess, digest)
        return digest

    async def monolithic(self, name: str, digest: str, body: AsyncIterator[bytes],
                         before: Callable[[], object] | None = None) -> str:
        """POST ?digest=: a whole blob in one request.

        No session: the client cannot resume such a request, so nothing is recorded until
        the bytes are in and verified; then one transaction records the blob. ``before``
        (the caller's authorization) runs first, in the worker thread that opens the upload.
        """

        def open_() -> BlobWriter:
            if before is not None:
                before()
            check_digest(digest)
            return self.store.blob_writer()

        put = await to_thread.run_sync(open_)
        sha = hashlib.sha256()

        def sink(chunks: list[bytes]) -> None:
            for chunk in chunks:
                sha.update(chunk)
            put.write(chunks)

        def finish(last: list[bytes], size: int) -> None:
            sink(last)
            actual = "sha256:" + sha.hexdigest()
            if actual != digest:
                raise DigestInvalid(f"uploaded bytes have digest {actual}, not {digest}; nothing was stored",
                                    detail={"expected": digest, "actual": actual, "size": size})
            put.prepare()  # durable before the transaction: its lock is held only for the rename and the rows
            with self.db.session() as s:
                lock_digest(s, digest)  # garbage collection deletes a blob only under this lock (registry.gc)
                put.commit(digest)
                record_blob(s, name, digest, size)  # linked, and its GC grace period starts over

        try:
            size, last = await self._pump(body, 0, sink)
            await to_thread.run_sync(finish, last, size)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await to_thread.run_sync(put.abort)
            raise
        return digest

    async def _receive(self, sess: _Session, body: AsyncIterator[bytes], content_range: str | None) -> "hashlib._Hash | None":
        """Write the body at the session's offset; returns the sha256 of the whole upload when it started at 0."""
        expect = _expected_length(content_range, sess)
        writer = await to_thread.run_sync(self.store.upload_writer, sess.id, sess.state)
        sha = hashlib.sha256() if sess.state.size == 0 else None

        def sink(chunks: list[bytes]) -> None:
            for chunk in chunks:
                if sha is not None:
                    sha.update(chunk)
                writer.write(chunk)

        def finish(last: list[bytes], received: int) -> None:
            try:
                sink(last)
            finally:
                new = writer.close()
            if expect is not None and received != expect:
                raise BlobUploadInvalid(f"Content-Range announced {expect} bytes but the body had {received}")
            if received:
                self._save(sess, new)

        try:
            received, last = await self._pump(body, sess.state.size, sink)
        except ClientGone:
            # Keep what arrived (_pump wrote it): the client asks where the upload stands and resumes from there.
            await to_thread.run_sync(self._save, sess, await to_thread.run_sync(writer.close))
            raise
        except TooLarge:
            await to_thread.run_sync(writer.close)
            await to_thread.run_sync(self._drop, sess)
            raise
        except BaseException:
            await to_thread.run_sync(writer.close)
            raise
        await to_thread.run_sync(finish, last, received)
        return sha

    async def _pump(self, body: AsyncIterator[bytes], offset: int, sink: Callable[[list[bytes]], None]) -> tuple[int, list[bytes]]:
        """Hand the body's chunks to ``sink`` in a worker thread, about FLUSH_BYTES at a time (the chunks
        themselves, never copied). Returns the byte count and the chunks not yet handed on (the caller
        handles them with its last step). When reading fails (the client went away) what arrived is
        handed on first, then ClientGone is raised."""
        received, batch, batched = 0, [], 0
        chunks = body.__aiter__()
        while True:
            try:
                chunk = await chunks.__anext__()
            except StopAsyncIteration:
                break
            except Exception as exc:
                if batch:
                    await to_thread.run_sync(sink, batch)
                raise ClientGone(str(exc)) from exc
            if not chunk:
                continue
            received += len(chunk)
            if offset + received > self.max_blob_bytes:
                raise TooLarge(f"blob exceeds the registry's limit of {self.max_blob_bytes} bytes")
            batch.append(chunk)
            batched += len(chunk)
            if batched >= FLUSH_BYTES:
                await to_thread.run_sync(sink, batch)
                batch, batched = [], 0
        return received, batch


def _expected_length(content_range: str | None, sess: _Session) -> int | None:
    """The byte count a Content-Range announces; 416 unless it starts where the upload stands."""
    if not content_range:
        return None
    m = _CONTENT_RANGE.match(content_range.strip())
    if not m:
        raise BlobUploadInvalid(f"malformed Content-Range {content_range!r}; expected <start>-<end>")
    start, end = int(m.group(1)), int(m.group(2))
    if start != sess.state.size or end < start:
        raise RangeNotSatisfiable(
            f"Content-Range {content_range} does not continue upload {sess.id}, which has {sess.state.size} bytes",
            headers=range_headers(sess.state.size),
        )
    return end - start + 1


def range_headers(size: int) -> dict[str, str]:
    """How an upload's offset is told: OCI's inclusive Range (0-0 when empty, as distribution does) and Upload-Offset."""
    return {"Range": f"0-{max(size - 1, 0)}", "Upload-Offset": str(size)}
