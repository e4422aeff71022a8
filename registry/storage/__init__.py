"""Blob drivers behind one interface (base.BlobStore), picked by the blob-store location's scheme.

A plain path or file:// is the filesystem driver. Another driver (s3://...) is one
module and one line in DRIVERS: "module:factory", the factory called with
(location, settings) and returning a BlobStore.
"""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

from registry.settings import Settings
from registry.storage.base import BlobStore, BlobWriter, Purged, StoredBlob, UploadState, UploadWriter

DRIVERS = {
    "file": "registry.storage.filesystem:from_location",
    "s3": "registry.storage.s3:from_location",
}


def open_store(settings: Settings) -> BlobStore:
    """The blob store named by ``settings`` (PARAMDELTA_BLOB_STORE)."""
    location = settings.resolved_blob_store()
    scheme = urlsplit(location).scheme if "://" in location else "file"
    target = DRIVERS.get(scheme)
    if target is None:
        raise ValueError(f"PARAMDELTA_BLOB_STORE {location!r}: no blob driver for {scheme}:// (known: {', '.join(DRIVERS)})")
    module, _, factory = target.partition(":")
    return getattr(importlib.import_module(module), factory)(location, settings)


__all__ = ["BlobStore", "BlobWriter", "Purged", "StoredBlob", "UploadState", "UploadWriter", "open_store", "DRIVERS"]
