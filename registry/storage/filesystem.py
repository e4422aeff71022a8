"""Blobs in a local folder: the embedded default.

    ROOT/blobs/sha256/<2 hex>/<64 hex>    committed blobs, linked into place whole, never replaced
    ROOT/uploads/<upload id>              bytes of an upload in progress (made by its first write)
    ROOT/uploads/<upload id>.sealed-<uuid hex>  an upload's bytes copied for its commit (see below)
    ROOT/uploads/put-<process tag>-<uuid hex>   a monolithic upload in progress (no session); the tag
                                          (registry.process) lets gc tell one whose server died

A committed blob is immutable: no upload writer can reach it. A session's upload file
may still be open for writing in a request that stalled mid-body (its lease taken over,
its bytes never to be recorded), so that file never becomes the blob: the commit copies
the recorded bytes into a fresh file of its own, hashing exactly what it writes
(``prepare_commit``), and links that file into place. Linking never replaces: when the
blob is already there, the copy is dropped (same digest, same bytes).
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

from registry import process
from registry.storage.base import READ_CHUNK, BlobStore, BlobWriter, Purged, StoredBlob, UploadState, UploadWriter, guard
from registry.storage.errors import BlobNotFound, DigestMismatch, OutOfSpace, StorageError, UploadCorrupted

HEX_LENGTHS = {"sha256": 64, "sha512": 128}  # the digest algorithms blobs are stored under
PUT_PREFIX = "put-"
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _translate(exc: Exception) -> StorageError | None:
    """The storage error for an OSError met in the blob folder (the driver's boundary, see ``guard``)."""
    if not isinstance(exc, OSError):
        return None
    if exc.errno in _NO_SPACE:
        return OutOfSpace(f"blob folder is full: {exc}")
    return StorageError(f"blob folder: {exc}")


@guard(_translate)
class FilesystemStore(BlobStore):
    """A folder of blobs; uploads are files appended to, then copied (sessions) or linked (monolithic) into place."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.uploads = self.root / "uploads"
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        self.uploads.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        """``blobs/<algorithm>/<2 hex>/<hex>``: sha256 blobs where they always were, sha512 beside them."""
        algorithm, _, hex_ = digest.rpartition(":")
        return self.root / "blobs" / (algorithm or "sha256") / hex_[:2] / hex_

    def stat(self, digest: str) -> int | None:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def open_range(self, digest: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        try:  # opened now, so a missing blob fails before streaming starts
            f = open(self.path(digest), "rb")
        except FileNotFoundError:  # garbage-collected since the caller looked it up, or never there
            raise BlobNotFound(f"blob {digest} is not in the blob folder") from None
        return _read_range(f, start, end)

    def delete(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

    def blobs(self) -> Iterator[StoredBlob]:
        for algorithm, length in HEX_LENGTHS.items():
            folder = self.root / "blobs" / algorithm
            for sub in sorted(folder.iterdir()) if folder.is_dir() else ():
                for p in sorted(sub.iterdir()):
                    st = _stat(p) if len(p.name) == length else None
                    if st is not None:
                        yield StoredBlob(f"{algorithm}:{p.name}", st.st_size, _utc(st.st_mtime))

    def blob_writer(self) -> BlobWriter:
        return _FilePut(self.uploads / f"{PUT_PREFIX}{process.tag()}-{uuid.uuid4().hex}", self)

    def begin_upload(self, upload_id: str) -> UploadState:
        self._upload_path(upload_id)  # checks the id; the file comes with the first write, so that a
        return UploadState(0, {})     # session whose row was never recorded leaves no file behind

    def upload_writer(self, upload_id: str, state: UploadState) -> UploadWriter:
        return _FileWriter(self._upload_path(upload_id), state)

    def prepare_commit(self, upload_id: str, state: UploadState, algorithm: str = "sha256") -> UploadState:
        """Seal the upload: its ``state.size`` bytes copied into a fresh file that no writer ever had open,
        hashed (with ``algorithm``) as they are written, and made durable. The returned state names that file
        and its digest."""
        sealed = self.uploads / f"{upload_id}.sealed-{uuid.uuid4().hex}"
        sha = hashlib.new(algorithm)
        try:
            with self._open_upload(upload_id, state) as src, open(sealed, "xb") as dst:
                for chunk in _read_range(src, 0, state.size - 1):
                    sha.update(chunk)
                    dst.write(chunk)
                if dst.tell() != state.size:  # the upload file was cut short behind the registry's back
                    raise UploadCorrupted(f"upload {upload_id} has {dst.tell()} bytes on disk, not the {state.size} "
                                          "recorded; start the upload again")
                dst.flush()
                os.fsync(dst.fileno())
        except BaseException:
            sealed.unlink(missing_ok=True)
            raise
        return UploadState(state.size, {**state.driver_state, "sealed": sealed.name,
                                        "sealed_digest": f"{algorithm}:{sha.hexdigest()}"})

    def upload_digest(self, upload_id: str, state: UploadState, algorithm: str = "sha256") -> str:
        sealed = state.driver_state.get("sealed_digest", "")
        if sealed.startswith(algorithm + ":"):  # the digest of the very bytes the commit will link
            return sealed
        h = hashlib.new(algorithm)
        with self._open_upload(upload_id, state) as f:
            for chunk in _read_range(f, 0, state.size - 1):
                h.update(chunk)
        return f"{algorithm}:{h.hexdigest()}"

    def commit_upload(self, upload_id: str, state: UploadState, digest: str) -> None:
        if "sealed" not in state.driver_state:  # a caller that skipped prepare_commit
            state = self.prepare_commit(upload_id, state, digest.partition(":")[0])
        sealed = self.uploads / state.driver_state["sealed"]
        if state.driver_state["sealed_digest"] != digest:
            sealed.unlink(missing_ok=True)
            raise DigestMismatch(f"upload {upload_id} holds {state.driver_state['sealed_digest']}, not {digest}; nothing was stored")
        self._link_into_place(sealed, digest)
        self.abort_upload(upload_id, state)

    def abort_upload(self, upload_id: str, state: UploadState) -> None:
        self._upload_path(upload_id).unlink(missing_ok=True)
        for sealed in self.uploads.glob(f"{upload_id}.sealed-*"):
            sealed.unlink(missing_ok=True)

    def purge_uploads(self, live: Mapping[str, UploadState], older_than: datetime) -> Purged:
        """Upload files (``<id>``, ``<id>.sealed-*``) of no live session, once older than ``older_than``; and at
        once a monolithic upload's temp file whose server process is gone (nothing can finish it)."""
        count = freed = 0
        for p in self.uploads.iterdir():
            st = _stat(p)
            if st is None or p.name.partition(".")[0] in live:
                continue
            if _utc(st.st_mtime) < older_than or _maker_gone(p.name):
                p.unlink(missing_ok=True)
                count, freed = count + 1, freed + st.st_size
        return Purged(count, freed)

    def _link_into_place(self, src: Path, digest: str) -> None:
        """Make ``src`` (durable, private to its caller) blob ``digest``; never replaces a stored blob."""
        dst = self.path(digest)
        dst.parent.mkdir(parents=True, exist_ok=True)  # parents: the first sha512 blob makes blobs/sha512
        try:
            os.link(src, dst)
        except FileExistsError:
            pass  # already stored: same digest, same bytes, and a blob once committed is never written again
        finally:
            src.unlink(missing_ok=True)

    def check(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise StorageError(f"blob folder {self.root} is not writable")

    def _open_upload(self, upload_id: str, state: UploadState) -> BinaryIO:
        """The upload's file to read; an upload that has no bytes yet may have none."""
        try:
            return open(self._upload_path(upload_id), "rb")
        except FileNotFoundError:
            if state.size:
                raise UploadCorrupted(f"upload {upload_id}: its {state.size} recorded bytes are gone from the blob "
                                      "folder; start the upload again") from None
            return io.BytesIO()

    def _upload_path(self, upload_id: str) -> Path:
        if not upload_id.replace("-", "").isalnum():
            raise ValueError(f"bad upload id {upload_id!r}")
        return self.uploads / upload_id


def _stat(p: Path) -> os.stat_result | None:
    """``p``'s stat, or None when it was deleted meanwhile (a listing races commits, aborts and gc)."""
    try:
        return p.stat()
    except FileNotFoundError:
        return None


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, timezone.utc)


def _maker_gone(name: str) -> bool:
    """Whether ``name`` is a monolithic upload's temp file (``put-<process tag>-<hex>``) whose process is gone."""
    if not name.startswith(PUT_PREFIX):
        return False
    maker, _, _ = name.removeprefix(PUT_PREFIX).rpartition("-")
    return bool(maker) and process.gone(maker)


IOV_MAX = 1024  # os.writev takes at most this many buffers (POSIX guarantees 16; Linux 1024)


@guard(_translate)
class _FilePut(BlobWriter):
    """A monolithic upload: a temp file written with writev, fsynced, then renamed into place whole."""

    def __init__(self, path: Path, store: FilesystemStore):
        self.path, self.store = path, store
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
        self._fd: int | None = os.open(path, flags, 0o666)

    def write(self, chunks: Sequence[bytes]) -> None:
        assert self._fd is not None
        if not hasattr(os, "writev"):  # Windows
            for chunk in chunks:
                _write_all(self._fd, chunk)
            return
        for i in range(0, len(chunks), IOV_MAX):
            group = list(chunks[i:i + IOV_MAX])
            done = os.writev(self._fd, group)
            if done < sum(len(c) for c in group):  # a short write (rare on a regular file): the rest one by one
                _write_all(self._fd, b"".join(group)[done:])

    def prepare(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None

    def commit(self, digest: str) -> None:
        self.prepare()  # closes this request's only handle: nothing can write to the file once it is a blob
        self.store._link_into_place(self.path, digest)

    def abort(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.path.unlink(missing_ok=True)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


@guard(_translate)
class _FileWriter(UploadWriter):
    def __init__(self, path: Path, state: UploadState):
        # No truncation: bytes past state.size (from a request cut off before it was recorded, or
        # one racing this) are overwritten or ignored; the commit copies only the recorded size.
        # Unbuffered, so that a full disk fails the write() that met it, not a later flush.
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0), 0o666)
        os.lseek(self._fd, state.size, os.SEEK_SET)
        self._size = state.size
        self._driver_state = state.driver_state

    def write(self, data: bytes) -> None:
        _write_all(self._fd, data)
        self._size += len(data)

    def close(self) -> UploadState:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
        return UploadState(self._size, self._driver_state)


def _read_range(f, start: int, end: int | None) -> Iterator[bytes]:  # noqa: ANN001
    with f:
        f.seek(start)
        left = None if end is None else end - start + 1
        while left is None or left > 0:
            data = f.read(READ_CHUNK if left is None else min(READ_CHUNK, left))
            if not data:
                return
            if left is not None:
                left -= len(data)
            yield data


def from_location(location: str, settings: object = None) -> FilesystemStore:  # noqa: ARG001
    """The driver factory named in registry.storage.DRIVERS: a path or file:// URL."""
    return FilesystemStore(location.removeprefix("file://"))
