"""The blob-driver interface: what the registry needs from a place that keeps bytes.

A driver stores immutable blobs by digest and the bytes of uploads in progress. It
keeps no upload state in memory: whatever it needs to continue an upload (a temp
file name, an S3 multipart upload id and its parts) goes into ``driver_state``, a
JSON-able dict the registry saves in its database after every request, so that
any replica can continue any upload. Digest checks and the metadata database are
the registry's business, not the driver's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
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

    @abstractmethod
    def begin_upload(self, upload_id: str) -> UploadState:
        """Start an empty upload."""

    @abstractmethod
    def upload_writer(self, upload_id: str, state: UploadState) -> UploadWriter:
        """A writer appending at ``state.size``. Bytes already stored past it (an interrupted request's)
        must not count: they are overwritten, and ``commit_upload`` keeps exactly ``state.size`` bytes."""

    @abstractmethod
    def upload_digest(self, upload_id: str, state: UploadState) -> str:
        """sha256 digest of the ``state.size`` bytes uploaded so far (the registry compares it)."""

    @abstractmethod
    def commit_upload(self, upload_id: str, state: UploadState, digest: str) -> None:
        """Make the upload's bytes visible as blob ``digest`` (already verified) and drop the upload."""

    @abstractmethod
    def abort_upload(self, upload_id: str, state: UploadState) -> None:
        """Drop an upload and its bytes (no error when already gone)."""

    def check(self) -> None:
        """Raise when the store cannot be used (for readiness checks)."""

    def close(self) -> None:
        """Release connections."""
