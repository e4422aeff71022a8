"""What a blob driver raises: storage facts, not HTTP answers.

Drivers translate their backend's failures (OSError, botocore's exceptions) into
these at their boundary, so that the services above never see a driver's
internals; registry.errors.from_storage turns them into the OCI errors clients get.
"""

from __future__ import annotations


class StorageError(Exception):
    """The blob store failed in a way no more specific error below describes (a server fault)."""


class BlobNotFound(StorageError, FileNotFoundError):
    """The blob is not in the store (never was, or garbage collection deleted it since it was looked up).
    Also a FileNotFoundError, which is what callers caught before these errors existed."""


class StorageUnavailable(StorageError):
    """The store cannot be reached or is overloaded: worth retrying later."""


class OutOfSpace(StorageError):
    """The store has no room (a full disk or quota): the write that met it failed."""


class UploadCorrupted(StorageError):
    """An upload's stored bytes no longer match what was recorded for it (missing, short, or a part
    replaced by a racing request): the upload cannot be completed; start it again."""


class UploadTooLarge(StorageError):
    """An upload grew past what the driver can store in one blob."""


class DigestMismatch(StorageError):
    """The bytes of an upload have another digest than the one it was to be committed under."""
