"""Blobs in a local folder: the embedded default.

    ROOT/blobs/sha256/<2 hex>/<64 hex>    committed blobs, renamed into place whole
    ROOT/uploads/<upload id>              bytes of an upload in progress
    ROOT/uploads/put-<uuid hex>           a monolithic upload in progress (no session)
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from registry.storage.base import READ_CHUNK, BlobStore, BlobWriter, UploadState, UploadWriter

PREFIX = "sha256:"


class FilesystemStore(BlobStore):
    """A folder of blobs; uploads are files appended to, then renamed into place."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.blobs = self.root / "blobs" / "sha256"
        self.uploads = self.root / "uploads"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.uploads.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        hex_ = digest.removeprefix(PREFIX)
        return self.blobs / hex_[:2] / hex_

    def stat(self, digest: str) -> int | None:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def open_range(self, digest: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        f = open(self.path(digest), "rb")  # opened now, so a missing blob fails before streaming starts
        return _read_range(f, start, end)

    def delete(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

    def list(self) -> Iterator[tuple[str, int]]:
        for sub in sorted(self.blobs.iterdir()):
            for p in sorted(sub.iterdir()):
                if len(p.name) == 64:
                    yield PREFIX + p.name, p.stat().st_size

    def blob_writer(self) -> BlobWriter:
        return _FilePut(self.uploads / f"put-{uuid.uuid4().hex}", self)

    def begin_upload(self, upload_id: str) -> UploadState:
        self._upload_path(upload_id).touch()
        return UploadState(0, {})

    def upload_writer(self, upload_id: str, state: UploadState) -> UploadWriter:
        return _FileWriter(self._upload_path(upload_id), state)

    def upload_digest(self, upload_id: str, state: UploadState) -> str:
        h = hashlib.sha256()
        with open(self._upload_path(upload_id), "rb") as f:
            for chunk in _read_range(f, 0, state.size - 1):
                h.update(chunk)
        return PREFIX + h.hexdigest()

    def prepare_commit(self, upload_id: str, state: UploadState) -> None:
        with open(self._upload_path(upload_id), "r+b") as f:
            f.truncate(state.size)
            os.fsync(f.fileno())

    def commit_upload(self, upload_id: str, state: UploadState, digest: str) -> None:
        src, dst = self._upload_path(upload_id), self.path(digest)
        with open(src, "r+b") as f:
            f.truncate(state.size)
            os.fsync(f.fileno())  # quick after prepare_commit (nothing left to write), needed without it
        dst.parent.mkdir(exist_ok=True)
        os.replace(src, dst)  # same content either way when the blob already exists

    def abort_upload(self, upload_id: str, state: UploadState) -> None:
        self._upload_path(upload_id).unlink(missing_ok=True)

    def check(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise OSError(f"blob folder {self.root} is not writable")

    def _upload_path(self, upload_id: str) -> Path:
        if not upload_id.replace("-", "").isalnum():
            raise ValueError(f"bad upload id {upload_id!r}")
        return self.uploads / upload_id


IOV_MAX = 1024  # os.writev takes at most this many buffers (POSIX guarantees 16; Linux 1024)


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
        self.prepare()
        dst = self.store.path(digest)
        dst.parent.mkdir(exist_ok=True)
        os.replace(self.path, dst)  # same content either way when the blob already exists

    def abort(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.path.unlink(missing_ok=True)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class _FileWriter(UploadWriter):
    def __init__(self, path: Path, state: UploadState):
        # No truncation: bytes past state.size (from a request cut off before it was recorded, or
        # one racing this) are overwritten or ignored; commit truncates to the recorded size.
        self._f = open(path, "r+b")
        self._f.seek(state.size)
        self._size = state.size
        self._driver_state = state.driver_state

    def write(self, data: bytes) -> None:
        self._f.write(data)
        self._size += len(data)

    def close(self) -> UploadState:
        self._f.close()
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
