"""The blob-driver interface: what the registry needs from a place that keeps bytes.

A driver stores immutable blobs by digest and the bytes of uploads in progress. It
keeps no upload state in memory: whatever it needs to continue an upload (a temp
file name, an S3 multipart upload id and its parts) goes into ``driver_state``, a
JSON-able dict the registry saves in its database after every request, so that
any replica can continue any upload. Digest checks and the metadata database are
the registry's business, not the driver's.

Committed blobs are immutable. A driver must make sure that no write path of an
upload (a request's writer, even one that stalled and lost its session, or wrote
after the commit) can change a blob once it is committed, and that a commit never
replaces a blob the store already has (the digest says the bytes are the same).
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

READ_CHUNK = 1 << 20


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
    def list(self) -> Iterator[tuple[str, int]]:
        """Every stored blob as (digest, size), for garbage collection."""

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

    def check(self) -> None:  # noqa: B027 - an optional hook: a no-op unless a backend needs it
        """Raise when the store cannot be used (for readiness checks)."""

    def close(self) -> None:  # noqa: B027 - an optional hook: a no-op unless a backend needs it
        """Release connections."""
