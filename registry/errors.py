"""Errors the registry answers with, rendered once (in app.py) as the OCI error envelope.

    {"errors": [{"code": "BLOB_UNKNOWN", "message": "...", "detail": {...}}]}

The service raises these where the fact is known; messages name the blob, manifest,
repository or field so a client can show them as they are. The blob drivers know
nothing of HTTP: what they raise (registry.storage.errors) becomes one of these in
``from_storage``.
"""

from __future__ import annotations

from typing import Any

from registry.storage import errors as storage


class RegistryError(Exception):
    """An error with an HTTP status, an OCI error code and a message a user can act on."""

    status = 400
    code = "UNSUPPORTED"

    def __init__(self, message: str, *, detail: Any = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.headers = headers or {}

    def envelope(self) -> dict[str, Any]:
        return {"errors": [{"code": self.code, "message": self.message, "detail": self.detail}]}


def _error(name: str, status: int, code: str) -> type[RegistryError]:
    return type(name, (RegistryError,), {"status": status, "code": code, "__doc__": f"{status} {code}"})


BlobUnknown = _error("BlobUnknown", 404, "BLOB_UNKNOWN")
BlobUploadUnknown = _error("BlobUploadUnknown", 404, "BLOB_UPLOAD_UNKNOWN")
BlobUploadInvalid = _error("BlobUploadInvalid", 400, "BLOB_UPLOAD_INVALID")
DigestInvalid = _error("DigestInvalid", 400, "DIGEST_INVALID")
ManifestBlobUnknown = _error("ManifestBlobUnknown", 400, "MANIFEST_BLOB_UNKNOWN")
ManifestInvalid = _error("ManifestInvalid", 400, "MANIFEST_INVALID")
ManifestUnknown = _error("ManifestUnknown", 404, "MANIFEST_UNKNOWN")
NameInvalid = _error("NameInvalid", 400, "NAME_INVALID")
NameUnknown = _error("NameUnknown", 404, "NAME_UNKNOWN")
SizeInvalid = _error("SizeInvalid", 400, "SIZE_INVALID")
TooLarge = _error("TooLarge", 413, "SIZE_INVALID")
Unauthorized = _error("Unauthorized", 401, "UNAUTHORIZED")
Denied = _error("Denied", 403, "DENIED")
Immutable = _error("Immutable", 409, "DENIED")
Unsupported = _error("Unsupported", 400, "UNSUPPORTED")
InvalidRequest = _error("InvalidRequest", 400, "INVALID_REQUEST")
NotFound = _error("NotFound", 404, "NOT_FOUND")


class RangeNotSatisfiable(RegistryError):
    """416: a PATCH that does not continue where the upload stands, or an unsatisfiable GET range."""

    status = 416
    code = "BLOB_UPLOAD_INVALID"


class ClientGone(Exception):
    """The request body ended early: the client went away mid-upload (what arrived is kept for a session's
    PATCH or PUT, dropped for a monolithic POST, which cannot be resumed)."""


# -- trust work (issue #10): references and request bodies ------------------------------
TagInvalid = _error("TagInvalid", 400, "TAG_INVALID")

# -- trust work (issue #10): upload quotas and a full disk ------------------------------
TooManyRequests = _error("TooManyRequests", 429, "TOOMANYREQUESTS")
StorageFull = _error("StorageFull", 507, "UNKNOWN")  # distribution's code for a server-side failure; the message says which
Unavailable = _error("Unavailable", 503, "UNAVAILABLE")  # distribution's code for a backend that cannot be reached
ServerFault = _error("ServerFault", 500, "UNKNOWN")

# -- the blob drivers' errors (issue #11) ------------------------------------------------
_FROM_STORAGE: list[tuple[type[storage.StorageError], type[RegistryError]]] = [
    (storage.BlobNotFound, BlobUnknown),  # deleted between the registry's lookup and the read: as if never there
    (storage.StorageUnavailable, Unavailable),
    (storage.OutOfSpace, StorageFull),
    (storage.UploadCorrupted, BlobUploadInvalid),
    (storage.UploadTooLarge, TooLarge),
    (storage.DigestMismatch, DigestInvalid),
]


def from_storage(exc: storage.StorageError) -> RegistryError:
    """The OCI error a client gets for a blob driver's error; any other is a server fault (500), whose message
    names no internals (the log has them)."""
    for kind, error in _FROM_STORAGE:
        if isinstance(exc, kind):
            return error(str(exc))
    return ServerFault("the registry's blob store failed; its log has the details")

