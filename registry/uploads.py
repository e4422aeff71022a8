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
A blob becomes visible only after its digest (sha256 or sha512) matches the one the client named.

One request at a time per session. A PATCH or PUT first takes the session's *lease*
(its process's tag and a random id in its row, renewed while its body keeps arriving,
PARAMDELTA_UPLOAD_LEASE_SECONDS); a second request meanwhile is answered 416 with the
offset and a Retry-After, unless the holder's process is known to be gone
(registry.process): then the lease is void at once. Only the lease holder may record
progress or complete the upload, and completing deletes the row in the transaction
that records the blob, so a session completes once. A request that stalled past its
lease can write nothing that counts: its progress is refused, and the blob store
never makes a blob of bytes such a writer can still reach (registry.storage.base).

Quotas, per token (the session's owner): at most PARAMDELTA_UPLOAD_MAX_SESSIONS
open sessions, and at most PARAMDELTA_UPLOAD_MAX_BYTES held by them, counting the
bytes each request holding a lease may still add (its Content-Length, or all the
room left when the body's length is not announced), reserved before a byte is read.
Refusals are 429 TOOMANYREQUESTS naming the limit. A full disk answers 507 and drops
the upload that met it, so that its bytes are freed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import anyio
from anyio import to_thread
from sqlalchemy import case, delete, false, func, or_, select, text, update
from sqlalchemy.orm import Session

from registry import process
from registry.blobs import algorithm_of, check_digest, hasher
from registry.db import Database, utcnow
from registry.db.models import UploadSession
from registry.db.queries import record_blob
from registry.errors import (
    BlobUploadInvalid,
    BlobUploadUnknown,
    ClientGone,
    DigestInvalid,
    RangeNotSatisfiable,
    StorageFull,
    TooLarge,
    TooManyRequests,
)
from registry.locks import lock_digest
from registry.settings import Settings
from registry.storage import BlobStore, BlobWriter, UploadState
from registry.storage.errors import OutOfSpace, UploadTooLarge

log = logging.getLogger("paramdelta.registry")

FLUSH_BYTES = 4 << 20  # body bytes gathered before one write in a worker thread
# Body bytes all requests of this process may hold gathered at once: past it, a request writes what it
# holds at once. Without it, every stalled body (a client that sends headers and a few MB, then waits)
# would keep up to FLUSH_BYTES in memory for as long as its connection stays open.
GATHERED_CAP_BYTES = 64 << 20
PURGE_EVERY_SECONDS = 300
OWNER_LOCK_SPACE = 0x7570  # PostgreSQL advisory lock (space, token id): one token's quota checks run one at a time
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
    lease: str | None = None  # this request's lease, once it holds the session
    budget: int = 0  # bytes this request may add: reserved against the owner's quota
    over_budget: Callable[[int], Exception] | None = None  # the error for a body that goes past the budget


class Uploads:
    """Upload sessions over a blob driver, with their state in the database."""

    def __init__(self, db: Database, store: BlobStore, settings: Settings):
        self.db = db
        self.store = store
        self.ttl = timedelta(seconds=settings.upload_ttl_seconds)
        self.max_blob_bytes = settings.max_blob_bytes
        self.max_sessions = settings.upload_max_sessions
        self.max_bytes = settings.upload_max_bytes
        # A request's hold on its session, renewed while its body arrives: one that stalls (or whose replica
        # died) loses it after this long, and the upload can go on in another request.
        self.lease = timedelta(seconds=settings.upload_lease_seconds)
        self._last_purge = 0.0
        self._gathered = 0  # body bytes gathered and not yet written, over all requests (event loop only)
        # Whole-blob uploads (POST ?digest=) in progress per token, in this process: they have no session row,
        # so the session quota cannot see them; the same number bounds them here (per replica).
        self._whole: Counter[int | None] = Counter()
        self._whole_bytes: Counter[int | None] = Counter()  # the bytes they may still bring, reserved up front
        self._whole_lock = threading.Lock()

    # -- synchronous steps (run in worker threads by the async entry points) --------

    def start(self, name: str, owner: int | None) -> UploadStatus:
        """Open an empty upload session in repository ``name`` for token ``owner``, within its quota."""
        if time.monotonic() - self._last_purge > PURGE_EVERY_SECONDS:
            self.purge_expired()
        upload_id = str(uuid.uuid4())
        with self.db.session() as s:
            _lock_owner(s, owner)
            count, held = _owner_usage(s, owner)
            if count >= self.max_sessions:
                raise TooManyRequests(
                    f"token #{owner} has {count} upload sessions open, the most PARAMDELTA_UPLOAD_MAX_SESSIONS={self.max_sessions} "
                    f"allows; finish or cancel one, or wait for idle ones to expire ({int(self.ttl.total_seconds())} s)")
            with _answer_disk_full(f"a new upload in {name}"):
                state = self.store.begin_upload(upload_id)
            s.add(UploadSession(id=upload_id, repository=name, size=state.size, driver_state=json.dumps(state.driver_state),
                                created_at=utcnow(), expires_at=utcnow() + self.ttl, owner_token_id=owner, reserved=0))
        return UploadStatus(upload_id, name, state.size)

    def status(self, name: str, upload_id: str) -> UploadStatus:
        sess = self._load(name, upload_id)
        return UploadStatus(sess.id, name, sess.state.size)

    def cancel(self, name: str, upload_id: str) -> None:
        self._drop(self._load(name, upload_id))

    def purge_expired(self) -> int:
        """Drop upload sessions idle past their expiry (none a live request holds); returns how many."""
        self._last_purge = time.monotonic()
        with self.db.session() as s:
            expired = list(s.scalars(select(UploadSession).where(*_expired(utcnow()))))
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
        if _is_expired(row, utcnow()):
            self._drop(sess)
            raise BlobUploadUnknown(f"upload {upload_id} expired; start a new one")
        return sess

    def _acquire(self, name: str, upload_id: str, declared: int | None) -> _Session:
        """Take the session's lease for this request and reserve the bytes it may add (``declared``, or all the
        room its quota and the blob cap leave when the length is unknown): refused before a byte is read."""
        now, lease = utcnow(), f"{process.tag()} {uuid.uuid4().hex}"  # who holds it, so others can tell it died
        with self.db.session() as s:
            _lock_row(s, upload_id)
            row = s.get(UploadSession, upload_id, with_for_update=True)
            if row is None or row.repository != name:
                raise BlobUploadUnknown(f"upload {upload_id} is not in progress in {name}")
            sess = _Session(row.id, name, UploadState(row.size, json.loads(row.driver_state)), lease)
            if _is_expired(row, now):
                expired = True
            else:
                expired = False
                if _lease_live(row, now):
                    wait = math.ceil((row.lease_expires_at - now).total_seconds())
                    raise RangeNotSatisfiable(
                        f"upload {upload_id} is busy: another request is writing to it (one at a time per upload); "
                        f"ask where it stands and resume once that request ends (at the latest in {wait} s)",
                        headers={**range_headers(row.size), "Retry-After": str(wait)})
                _lock_owner(s, row.owner_token_id)
                _, held = _owner_usage(s, row.owner_token_id, excluding=upload_id)
                sess.budget, sess.over_budget = self._budget(row.size, held, declared, row.owner_token_id, f"upload {row.id}")
                row.lease, row.lease_expires_at, row.reserved = lease, now + self.lease, sess.budget
                row.expires_at = now + self.ttl
        if expired:
            self._drop(sess)
            raise BlobUploadUnknown(f"upload {upload_id} expired; start a new one")
        return sess

    def _budget(self, size: int, held: int, declared: int | None, owner: int | None,
                what: str) -> tuple[int, Callable[[int], Exception]]:
        """(bytes a request may add to an upload ``what`` of ``owner``'s that has ``size`` bytes while the token's
        other uploads hold ``held``, the error past them); raises when even the announced length does not fit."""
        blob_room = self.max_blob_bytes - size
        quota_room = self.max_bytes - held - size
        too_large = TooLarge(f"blob exceeds the registry's limit of {self.max_blob_bytes} bytes (PARAMDELTA_MAX_BLOB_BYTES)")
        if size + (declared or 0) > self.max_blob_bytes:
            raise too_large
        if size + (declared or 0) > self.max_bytes:  # this upload alone: waiting would not help
            raise TooLarge(f"{what} would hold {size + (declared or 0)} bytes, over the {self.max_bytes} "
                           "a token's uploads may hold (PARAMDELTA_UPLOAD_MAX_BYTES)")
        over_quota = TooManyRequests(
            f"token #{owner}'s other open uploads hold {held} bytes; PARAMDELTA_UPLOAD_MAX_BYTES={self.max_bytes} "
            f"leaves room for {max(quota_room, 0)} more in {what}; finish or cancel some, or wait")
        if declared is None:  # a body of unknown length may take all the room there is, so it reserves it all
            budget = min(blob_room, quota_room)
            if budget <= 0:
                raise over_quota if quota_room <= 0 else too_large
        elif declared > quota_room:
            raise over_quota
        else:
            budget = declared
        return budget, (lambda received: too_large if size + received > self.max_blob_bytes else over_quota)

    def _renew(self, sess: _Session) -> None:
        """Extend this request's lease while its body keeps arriving; refused when another request took it."""
        now = utcnow()
        with self.db.session() as s:
            done = s.execute(update(UploadSession).where(UploadSession.id == sess.id, UploadSession.lease == sess.lease)
                             .values(lease_expires_at=now + self.lease, expires_at=now + self.ttl)).rowcount
        if not done:
            raise self._lost(sess)

    def _release(self, sess: _Session) -> None:
        """Give the lease back after a failed request (a no-op when the session is gone or another request
        holds it). Best effort: the request's own error is the one to answer; the lease lapses anyway."""
        try:
            with self.db.session() as s:
                s.execute(update(UploadSession).where(UploadSession.id == sess.id, UploadSession.lease == sess.lease)
                          .values(lease=None, lease_expires_at=None, reserved=0))
        except Exception:  # noqa: BLE001
            log.exception("upload %s: could not give its lease back; it lapses in %d s", sess.id, self.lease.total_seconds())

    def _save(self, sess: _Session, new: UploadState, *, keep_lease: bool = False) -> None:
        """Record progress; only the lease holder may."""
        values = dict(size=new.size, driver_state=json.dumps(new.driver_state), expires_at=utcnow() + self.ttl, reserved=0)
        if not keep_lease:
            values.update(lease=None, lease_expires_at=None)
        with self.db.session() as s:
            done = s.execute(update(UploadSession).where(UploadSession.id == sess.id, UploadSession.lease == sess.lease)
                             .values(**values)).rowcount
        if not done:
            raise self._lost(sess)
        sess.state = new

    def _lost(self, sess: _Session) -> RangeNotSatisfiable | BlobUploadUnknown:
        """The error for a request whose lease lapsed and went to another request, or whose session ended meanwhile."""
        with self.db.session() as s:
            row = s.get(UploadSession, sess.id)
        if row is None:
            return BlobUploadUnknown(f"upload {sess.id} was completed or cancelled while this request ran; nothing it sent was kept")
        return RangeNotSatisfiable(f"upload {sess.id} was taken over by another request while this one stalled; "
                                   "ask where it stands and resume", headers=range_headers(row.size))

    def _drop(self, sess: _Session) -> None:
        """End the session and delete its bytes (cancel, expiry)."""
        self.store.abort_upload(sess.id, sess.state)
        with self.db.session() as s:
            s.execute(delete(UploadSession).where(UploadSession.id == sess.id))

    def _drop_held(self, sess: _Session) -> None:
        """End the session this request holds and delete its bytes (a failed upload); nothing when another
        request took the session over meanwhile: that one decides its fate. The bytes go first: on a full
        disk the database may need the room they free."""
        with self.db.session() as s:
            row = s.get(UploadSession, sess.id)
        if row is None or row.lease != sess.lease:
            return
        self.store.abort_upload(sess.id, sess.state)
        with self.db.session() as s:
            s.execute(delete(UploadSession).where(UploadSession.id == sess.id, UploadSession.lease == sess.lease))

    def _seal(self, sess: _Session, digest: str) -> UploadState:
        """Freeze the upload's bytes for its commit and check their digest (DIGEST_INVALID drops the upload)."""
        with _answer_disk_full(f"upload {sess.id}", lambda: self._drop_held(sess)):
            algorithm = algorithm_of(digest)
            # Durable before the transaction, which then holds its lock briefly.
            state = self.store.prepare_commit(sess.id, sess.state, algorithm)
            actual = self.store.upload_digest(sess.id, state, algorithm)
        if actual != digest:
            self._drop_held(_Session(sess.id, sess.name, state, sess.lease))
            raise DigestInvalid(f"uploaded bytes have digest {actual}, not {digest}; nothing was stored",
                                detail={"expected": digest, "actual": actual, "size": state.size})
        return state

    def _commit(self, sess: _Session, state: UploadState, digest: str) -> None:
        with self.db.session() as s:
            lock_digest(s, digest)  # garbage collection deletes a blob only under this lock (registry.locks)
            # Completing deletes the row, and only the lease holder may: one completion per session.
            held = s.execute(delete(UploadSession).where(UploadSession.id == sess.id, UploadSession.lease == sess.lease)).rowcount
            if held:
                self.store.commit_upload(sess.id, state, digest)
                record_blob(s, sess.name, digest, state.size)  # linked, and its GC grace period starts over
        if not held:
            raise self._lost(sess)

    # -- async entry points (they read the request body) ----------------------------

    async def append(self, name: str, upload_id: str, body: AsyncIterator[bytes], content_range: str | None,
                     declared: int | None = None) -> UploadStatus:
        """PATCH: append the body at the session's offset. ``declared``: the body's length when announced."""
        sess = await to_thread.run_sync(self._acquire, name, upload_id, declared)
        try:
            await self._receive(sess, body, content_range)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await to_thread.run_sync(self._release, sess)
            raise
        return UploadStatus(sess.id, name, sess.state.size)

    async def finish(self, name: str, upload_id: str, digest: str, body: AsyncIterator[bytes],
                     content_range: str | None = None, declared: int | None = None) -> str:
        """PUT: append the body (if any), check the digest, make the blob visible."""
        check_digest(digest)
        sess = await to_thread.run_sync(self._acquire, name, upload_id, declared)
        try:
            await self._receive(sess, body, content_range, keep_lease=True)
            state = await to_thread.run_sync(self._seal, sess, digest)
            await to_thread.run_sync(self._commit, sess, state, digest)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await to_thread.run_sync(self._release, sess)
            raise
        return digest

    async def monolithic(self, name: str, digest: str, body: AsyncIterator[bytes],
                         before: Callable[[], object] | None = None, declared: int | None = None) -> str:
        """POST ?digest=: a whole blob in one request.

        No session: the client cannot resume such a request, so nothing is recorded until
        the bytes are in and verified; then one transaction records the blob. ``before``
        (the caller's authorization) runs first, in the worker thread that opens the upload.
        """

        held: list[tuple[int | None, int, Callable[[int], Exception]]] = []

        def open_() -> BlobWriter:
            who = before() if before is not None else None
            check_digest(digest)
            held.append(self._begin_whole(getattr(who, "token_id", None), declared))
            with _answer_disk_full(f"upload of {digest}"):
                return self.store.blob_writer()

        try:
            put = await to_thread.run_sync(open_)
            _, budget, over = held[0]
            return await self._receive_whole(name, digest, body, put, budget, over)
        finally:
            if held:
                owner, budget, _ = held[0]
                self._end_whole(owner, budget)

    def _begin_whole(self, owner: int | None, declared: int | None) -> tuple[int | None, int, Callable[[int], Exception]]:
        """Count a whole-blob upload of ``owner``'s and reserve the bytes it may bring, under the same rules as a
        session's request (``_budget``; the whole-blob uploads in progress in this process are its "held").
        Returns (owner, bytes reserved, the error past them)."""
        with self._whole_lock:
            count = self._whole[owner]
            if count >= self.max_sessions:
                raise TooManyRequests(
                    f"token #{owner} has {count} whole-blob uploads in progress, the most "
                    f"PARAMDELTA_UPLOAD_MAX_SESSIONS={self.max_sessions} allows; wait for one to end")
            budget, over = self._budget(0, self._whole_bytes[owner], declared, owner, "this whole-blob upload")
            self._whole[owner] += 1
            self._whole_bytes[owner] += budget
        return owner, budget, over

    def _end_whole(self, owner: int | None, reserved: int) -> None:
        with self._whole_lock:
            self._whole[owner] -= 1
            self._whole_bytes[owner] -= reserved
            if not self._whole[owner]:
                del self._whole[owner], self._whole_bytes[owner]

    async def _receive_whole(self, name: str, digest: str, body: AsyncIterator[bytes], put: BlobWriter,
                             budget: int, over: Callable[[int], Exception]) -> str:
        """The bytes of a whole-blob upload, hashed as they arrive, verified, then recorded in one transaction."""
        sha = hasher(digest)  # sha256 or sha512, as the digest names

        def sink(chunks: list[bytes]) -> None:
            for chunk in chunks:
                sha.update(chunk)
            put.write(chunks)

        def finish(last: list[bytes], size: int) -> None:
            sink(last)
            actual = f"{sha.name}:{sha.hexdigest()}"
            if actual != digest:
                raise DigestInvalid(f"uploaded bytes have digest {actual}, not {digest}; nothing was stored",
                                    detail={"expected": digest, "actual": actual, "size": size})
            put.prepare()  # durable before the transaction: its lock is held only for the link and the rows
            with self.db.session() as s:
                lock_digest(s, digest)  # garbage collection deletes a blob only under this lock (registry.locks)
                put.commit(digest)
                record_blob(s, name, digest, size)  # linked, and its GC grace period starts over

        try:
            size, last = await self._pump(body, budget, over, sink)
            await to_thread.run_sync(finish, last, size)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await to_thread.run_sync(put.abort)  # a full disk gets its space back at once
            _disk_full(f"upload of {digest}", exc)
            raise
        return digest

    async def _receive(self, sess: _Session, body: AsyncIterator[bytes], content_range: str | None, *,
                       keep_lease: bool = False) -> None:
        """Write the body at the session's offset and record it; a full disk or an oversized body drops the upload."""
        expect = _expected_length(content_range, sess)
        try:
            writer = await to_thread.run_sync(self.store.upload_writer, sess.id, sess.state)
        except OutOfSpace as exc:
            await self._drop_if_full(sess, exc)
            raise

        def sink(chunks: list[bytes]) -> None:
            for chunk in chunks:
                writer.write(chunk)

        def finish(last: list[bytes], received: int) -> None:
            try:
                sink(last)
            finally:
                new = writer.close()
            if expect is not None and received != expect:
                raise BlobUploadInvalid(f"Content-Range announced {expect} bytes but the body had {received}")
            self._save(sess, new, keep_lease=keep_lease)

        try:
            received, last = await self._pump(body, sess.budget, sess.over_budget, sink, lambda: self._renew(sess))
        except ClientGone:
            # Keep what arrived (_pump wrote it): the client asks where the upload stands and resumes from there.
            await to_thread.run_sync(self._save, sess, await to_thread.run_sync(writer.close))
            raise
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await to_thread.run_sync(writer.close)
                if isinstance(exc, (TooLarge, UploadTooLarge)):  # the quota's, or the driver's limit
                    await to_thread.run_sync(self._drop_held, sess)
                await self._drop_if_full(sess, exc)
            raise
        try:
            await to_thread.run_sync(finish, last, received)  # closes the writer whatever happens
        except OutOfSpace as exc:
            await self._drop_if_full(sess, exc)
            raise

    async def _drop_if_full(self, sess: _Session, exc: BaseException) -> None:
        """When ``exc`` is a full disk: drop the upload and raise 507 (``_disk_full``)."""
        with anyio.CancelScope(shield=True):
            await to_thread.run_sync(_disk_full, f"upload {sess.id}", exc, lambda: self._drop_held(sess))

    async def _pump(self, body: AsyncIterator[bytes], limit: int, over: Callable[[int], Exception] | None,
                    sink: Callable[[list[bytes]], None], renew: Callable[[], None] | None = None) -> tuple[int, list[bytes]]:
        """Hand the body's chunks to ``sink`` in a worker thread, about FLUSH_BYTES at a time (the chunks
        themselves, never copied). Returns the byte count and the chunks not yet handed on (the caller
        handles them with its last step). More than ``limit`` bytes raise ``over(received)``; ``renew``
        runs every third of the lease while bytes arrive. When reading fails (the client went away) what
        arrived is handed on first, then ClientGone is raised."""
        received, batch, batched = 0, [], 0
        renewed = time.monotonic()
        chunks = body.__aiter__()
        try:
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
                if received > limit:
                    raise over(received) if over is not None else TooLarge(f"body is over the limit of {limit} bytes")
                batch.append(chunk)
                batched += len(chunk)
                self._gathered += len(chunk)
                if batched >= FLUSH_BYTES or self._gathered > GATHERED_CAP_BYTES:
                    await to_thread.run_sync(sink, batch)
                    self._gathered -= batched
                    batch, batched = [], 0
                if renew is not None and time.monotonic() - renewed > self.lease.total_seconds() / 3:
                    await to_thread.run_sync(renew)
                    renewed = time.monotonic()
        finally:
            self._gathered -= batched  # what is left goes to the caller's last step (or is dropped with an error)
        return received, batch


def body_length(headers: Mapping[str, str]) -> int | None:
    """The length a request announces for its body: Content-Length; 0 without one and without chunked
    transfer encoding (HTTP/1.1 then has no body); None when it streams a body of unknown length."""
    declared = headers.get("content-length")
    if declared is not None and declared.strip().isdigit():
        return int(declared)
    return None if "chunked" in headers.get("transfer-encoding", "").lower() else 0


# -- the database side of leases and quotas ------------------------------------------


def _is_expired(row: UploadSession, now: datetime) -> bool:
    """Idle past its expiry, and no live request holds it."""
    return row.expires_at < now and (row.lease_expires_at is None or row.lease_expires_at < now)


def _lease_live(row: UploadSession, now: datetime) -> bool:
    """Whether a request holds the session: its lease has not lapsed, and its process is not known to be gone
    (a server killed and restarted on this host gives its uploads back at once, not when their leases lapse)."""
    if row.lease is None or row.lease_expires_at is None or row.lease_expires_at < now:
        return False
    return not process.gone(row.lease.partition(" ")[0])


def _expired(now: datetime) -> tuple:
    """``_is_expired`` as SQL conditions."""
    return (UploadSession.expires_at < now,
            or_(UploadSession.lease_expires_at.is_(None), UploadSession.lease_expires_at < now))


def _owner_usage(s: Session, owner: int | None, excluding: str | None = None) -> tuple[int, int]:
    """(open sessions, bytes they hold or may still add) of token ``owner``. A reservation counts until its
    request ends or another takes the session over, even past its lease: a request that stalls, loses its
    lease and then sends its bytes after all writes them (though they never count as the upload's), so
    letting its reservation lapse would let a token hold its quota many times over."""
    now = utcnow()
    live_reserved = case((UploadSession.lease.is_not(None), UploadSession.reserved), else_=0)
    q = select(func.count(), func.coalesce(func.sum(UploadSession.size + live_reserved), 0)).where(
        UploadSession.owner_token_id == owner, or_(UploadSession.expires_at >= now, UploadSession.lease_expires_at >= now))
    if excluding is not None:
        q = q.where(UploadSession.id != excluding)
    count, held = s.execute(q).one()
    return int(count), int(held)


def _lock_owner(s: Session, owner: int | None) -> None:
    """Serialize one token's quota checks with its reservations until the transaction ends."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SELECT pg_advisory_xact_lock(:space, :owner)"), {"space": OWNER_LOCK_SPACE, "owner": owner or 0})
    else:  # SQLite: any write takes the database's one write lock, held until commit
        s.execute(update(UploadSession).where(false()).values(size=UploadSession.size))


def _lock_row(s: Session, upload_id: str) -> None:
    """SQLite: the write lock, taken first so that the reads after it see what the decision is made on
    (PostgreSQL locks the row itself, FOR UPDATE)."""
    if s.get_bind().dialect.name != "postgresql":
        s.execute(update(UploadSession).where(UploadSession.id == upload_id).values(size=UploadSession.size))


def _disk_full(what: str, exc: BaseException, cleanup: Callable[[], None] | None = None) -> None:
    """When ``exc`` is a full store (the driver's OutOfSpace): run ``cleanup`` (drop the upload: its bytes are freed
    now, not at its expiry) and raise 507 "registry storage is full". Any other error: nothing."""
    if not isinstance(exc, OutOfSpace):
        return
    if cleanup is not None:
        try:
            cleanup()
        except Exception:  # noqa: BLE001 - the disk-full answer matters more; the log says what else failed
            log.exception("%s: could not drop the upload after the disk filled", what)
    log.error("%s: registry storage is full (%s)", what, exc)
    raise StorageFull(f"registry storage is full: {what} was dropped; try again when space has been freed") from exc


@contextlib.contextmanager
def _answer_disk_full(what: str, cleanup: Callable[[], None] | None = None) -> Iterator[None]:
    """``_disk_full`` around a block of synchronous code."""
    try:
        yield
    except OutOfSpace as exc:
        _disk_full(what, exc, cleanup)
        raise


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
