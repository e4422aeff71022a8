"""The blob-driver interface: what the registry needs from a place that keeps bytes.

A driver stores immutable blobs by digest and the bytes of uploads in progress. It
keeps no upload state in memory: whatever it needs to continue an upload (a temp
file name, an S3 multipart upload id and its parts) goes into ``driver_state``, a
JSON-able dict the registry saves in its database after every request, so that
any replica can continue any upload. Digest checks and the metadata database are
the registry's business, not the driver's; so is HTTP: a driver raises the errors of
registry.storage.errors (``guard`` wraps its backend's own at its boundary).

Garbage collection works through this interface alone (as distribution's storage
drivers serve its GC through Walk and Stat): ``blobs`` lists what is stored, with
the time each was written, and ``purge_uploads`` removes what uploads left behind.

Committed blobs are immutable. A driver must make sure that no write path of an
upload (a request's writer, even one that stalled and lost its session, or wrote
after the commit) can change a blob once it is committed, and that a commit never
replaces a blob the store already has (the digest says the bytes are the same).
"""

from __future__ import annotations

import functools
import inspect
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from registry.storage.errors import StorageError

READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class StoredBlob:
    """A blob as the store has it: garbage collection's view of the bytes."""

    digest: str
    size: int
    modified: datetime  # when it was written, timezone-aware UTC


@dataclass(frozen=True)
class Purged:
    """What ``purge_uploads`` removed: how many of the driver's leftovers, holding how many bytes."""

    count: int = 0
    bytes: int = 0


@dataclass
class UploadState:
    """Where an upload stands: bytes durably received, and the driver's own notes."""

    size: int = 0
    driver_state: dict[str, Any] = field(default_factory=dict)


class UploadWriter(ABC):
    """Takes one request's bytes for an upload, appended at the offset it was opened at."""

    @abstractmethod
    def write(self, data: bytes) -> None:
        """Append ``data``."""

    @abstractmethod
    def close(self) -> UploadState:
        """Finish this request; return the new state (``size`` counts only bytes safely stored)."""


class BlobWriter(ABC):
    """One whole blob arriving in one request (a monolithic upload), kept out of sight until ``commit``.

    No upload session is recorded for it: the client cannot resume such a request, so
    when it fails the bytes are dropped (``abort``).
    """

    @abstractmethod
    def write(self, chunks: Sequence[bytes]) -> None:
        """Append ``chunks``, in order."""

    def prepare(self) -> None:  # noqa: B027 - an optional hook: a no-op unless a backend needs it
        """Make the bytes durable; called before the commit's transaction, so that it holds its locks briefly."""

    @abstractmethod
    def commit(self, digest: str) -> None:
        """Make the bytes visible as blob ``digest`` (already verified)."""

    @abstractmethod
    def abort(self) -> None:
        """Drop the bytes (no error when already gone)."""


class _UploadBlobWriter(BlobWriter):
    """A BlobWriter over any driver's upload methods: an upload of its own, never recorded in the database."""

    def __init__(self, store: BlobStore):
        self.store, self.upload_id = store, str(uuid.uuid4())
        self.state = store.begin_upload(self.upload_id)
        self.writer: UploadWriter | None = store.upload_writer(self.upload_id, self.state)

    def write(self, chunks: Sequence[bytes]) -> None:
        assert self.writer is not None
        for chunk in chunks:
            self.writer.write(chunk)

    def _close(self) -> None:
        if self.writer is not None:
            writer, self.writer = self.writer, None
            self.state = writer.close()

    def prepare(self) -> None:
        self._close()

    def commit(self, digest: str) -> None:
        self._close()
        self.store.commit_upload(self.upload_id, self.state, digest)

    def abort(self) -> None:
        try:
            self._close()
        finally:
            self.store.abort_upload(self.upload_id, self.state)


class BlobStore(ABC):
    """A content-addressed blob store with resumable uploads."""

    @abstractmethod
    def stat(self, digest: str) -> int | None:
        """The size of blob ``digest``, or None when the store does not have it."""

    @abstractmethod
    def open_range(self, digest: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Bytes ``start``..``end`` (inclusive; None: to the end) of blob ``digest``, in chunks."""

    def redirect_url(self, digest: str, size: int) -> str | None:
        """A URL the client may fetch the blob from directly (a presigned URL), or None to stream it here."""
        return None

    @abstractmethod
    def delete(self, digest: str) -> None:
        """Remove blob ``digest`` (no error when it is absent)."""

    @abstractmethod
    def blobs(self) -> Iterator[StoredBlob]:
        """Every stored blob (one deleted while the listing runs may be left out)."""

    def blob_writer(self) -> BlobWriter:
        """A writer for one whole blob (a monolithic upload). By default an upload of its own that no
        session records; a driver may offer a cheaper way (the filesystem driver: a temp file)."""
        return _UploadBlobWriter(self)

    @abstractmethod
    def begin_upload(self, upload_id: str) -> UploadState:
        """Start an empty upload."""

    @abstractmethod
    def upload_writer(self, upload_id: str, state: UploadState) -> UploadWriter:
        """A writer appending at ``state.size``. Bytes already stored past it (an interrupted request's)
        must not count: they are overwritten, and ``commit_upload`` keeps exactly ``state.size`` bytes."""

    @abstractmethod
    def upload_digest(self, upload_id: str, state: UploadState, algorithm: str = "sha256") -> str:
        """The digest (``algorithm``: sha256 or sha512) of the ``state.size`` bytes uploaded so far (the
        registry compares it)."""

    def prepare_commit(self, upload_id: str, state: UploadState, algorithm: str = "sha256") -> UploadState:
        """Make the upload's ``state.size`` bytes durable ahead of ``commit_upload``, which runs under the
        digest's lock (a database transaction): the slow part goes here. Returns the state to pass to
        ``upload_digest`` and ``commit_upload`` (the filesystem driver's names its sealed copy and its digest
        with ``algorithm``). Optional."""
        return state

    @abstractmethod
    def commit_upload(self, upload_id: str, state: UploadState, digest: str) -> None:
        """Make the upload's bytes visible as blob ``digest`` (already verified) and drop the upload.
        When the store already has ``digest`` it is left as it is and the upload is dropped."""

    @abstractmethod
    def abort_upload(self, upload_id: str, state: UploadState) -> None:
        """Drop an upload and its bytes (no error when already gone)."""

    @abstractmethod
    def purge_uploads(self, live: Mapping[str, UploadState], older_than: datetime) -> Purged:
        """Remove what uploads left in the store that no live session can use: the bytes of uploads that are
        not in ``live`` (upload id -> its recorded state), and those of live ones that their recorded state
        does not name (a cut-off request's), once last written before ``older_than`` (aware UTC)."""

    def check(self) -> None:  # noqa: B027 - an optional hook: a no-op unless a backend needs it
        """Raise when the store cannot be used (for readiness checks)."""

    def close(self) -> None:  # noqa: B027 - an optional hook: a no-op unless a backend needs it
        """Release connections."""


T = TypeVar("T", bound=type)


def guard(translate: Callable[[Exception], StorageError | None]) -> Callable[[T], T]:
    """A class decorator for a driver's classes: every public method (generators too) raises
    ``translate(exc)`` in place of a backend exception it knows (it returns None for others, which
    pass as they are). Storage errors pass untouched, so guarded methods may call each other."""

    def check(exc: Exception) -> None:
        new = None if isinstance(exc, StorageError) else translate(exc)
        if new is not None:
            raise new from exc

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def gen(*args: Any, **kwargs: Any) -> Any:
                try:
                    yield from fn(*args, **kwargs)
                except Exception as exc:
                    check(exc)
                    raise
            return gen

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                check(exc)
                raise
        return call

    def decorate(cls: T) -> T:
        for name, value in list(vars(cls).items()):
            if not name.startswith("_") and inspect.isfunction(value):
                setattr(cls, name, wrap(value))
        return cls

    return decorate
