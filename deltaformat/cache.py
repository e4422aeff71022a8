"""The local, content-addressed cache that pulls download into.

    $PARAMDELTA_CACHE/                       (default ~/.cache/paramdelta)
      blobs/sha256/<hex>                     verified blobs, shared by every artifact (manifest.json included)
      partial/<hex>.part                     a download in progress; the next attempt resumes it with Range
      partial/<hex>.lock                     held while one process downloads that blob
      manifests/sha256/<hex>                 OCI manifests by digest
      refs/<registry>/<ns>/<name>/<tag>      the digest a tag resolved to, for offline use
      uploads/<registry>/<hex>.json          an upload session in progress, for the next push to resume
      sources/<registry>/<hex>               repositories of that registry the blob was pulled from or pushed to,
                                             one a line: a push elsewhere mounts it from one rather than upload it

A blob is renamed into blobs/ only after its sha256 matched, so blobs/ holds nothing
unverified. With PARAMDELTA_OFFLINE=1 the client reads only this folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from deltaformat.digests import blob_digest, hex_of
from deltaformat.environment import cache_dir, offline
from deltaformat.fsutil import write_file_atomic
from deltaformat.reference import NAME_RE

MAX_SOURCES = 8  # repositories remembered per blob and registry: one that still has it is enough

__all__ = ["Cache", "cache_dir", "offline"]


class Cache:
    """One cache folder; safe to share between threads and processes."""

    def __init__(self, root: str | os.PathLike[str] | None = None):
        self.root = Path(root) if root is not None else cache_dir()
        self.blob_dir = self.root / "blobs" / "sha256"

    # -- blobs -------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        return self.blob_dir / hex_of(digest)

    def has_blob(self, digest: str, size: int | None = None) -> bool:
        try:
            st = self.blob_path(digest).stat()
        except FileNotFoundError:
            return False
        return size is None or st.st_size == size

    def part_path(self, digest: str) -> Path:
        path = self.root / "partial" / f"{hex_of(digest)}.part"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    @contextlib.contextmanager
    def blob_lock(self, digest: str) -> Iterator[None]:
        """Exclusive right to download ``digest`` (across processes; released if the holder dies)."""
        lock = self.root / "partial" / f"{hex_of(digest)}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def commit_part(self, digest: str) -> Path:
        """Move a verified download into blobs/."""
        dest = self.blob_path(digest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.part_path(digest), dest)
        return dest

    def put_blob(self, digest: str, data: bytes) -> Path:
        """Store bytes already in memory (and already verified against ``digest``)."""
        dest = self.blob_path(digest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        write_file_atomic(dest, data)
        return dest

    def read_blob(self, digest: str) -> bytes | None:
        """A cached blob's bytes, re-verified; None when absent or damaged (a damaged one is removed)."""
        return self._read_verified(self.blob_path(digest), digest)

    # -- manifests and refs -------------------------------------------------------------

    def put_manifest(self, digest: str, data: bytes) -> None:
        path = self.root / "manifests" / "sha256" / hex_of(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file_atomic(path, data)

    def get_manifest(self, digest: str) -> bytes | None:
        return self._read_verified(self.root / "manifests" / "sha256" / hex_of(digest), digest)

    def set_ref(self, registry: str, name: str, tag: str, digest: str) -> None:
        path = self._ref_path(registry, name, tag)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file_atomic(path, (digest + "\n").encode())

    def get_ref(self, registry: str, name: str, tag: str) -> str | None:
        try:
            return self._ref_path(registry, name, tag).read_text().strip() or None
        except FileNotFoundError:
            return None

    # -- upload sessions ----------------------------------------------------------------

    def get_upload(self, registry: str, name: str, digest: str) -> str | None:
        """The upload URL of an unfinished push of ``digest`` to ``name``, if one was recorded."""
        try:
            state = json.loads(self._upload_path(registry, digest).read_text())
        except (FileNotFoundError, ValueError):
            return None
        return state.get("location") if state.get("name") == name else None

    def set_upload(self, registry: str, name: str, digest: str, location: str | None) -> None:
        path = self._upload_path(registry, digest)
        if location is None:
            path.unlink(missing_ok=True)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file_atomic(path, json.dumps({"name": name, "location": location}).encode())

    # -- where blobs were seen -----------------------------------------------------------

    def blob_sources(self, registry: str, digest: str) -> list[str]:
        """Repositories of ``registry`` that held ``digest`` when this cache last talked to them, newest first."""
        try:
            lines = self._sources_path(registry, digest).read_text().split()
        except (FileNotFoundError, UnicodeDecodeError):
            return []
        return [name for name in reversed(lines) if NAME_RE.match(name)]

    def add_blob_source(self, registry: str, digest: str, name: str) -> None:
        """Record that repository ``name`` of ``registry`` holds ``digest`` (the last MAX_SOURCES are kept)."""
        known = self.blob_sources(registry, digest)
        if known[:1] == [name]:
            return
        names = [name] + [n for n in known if n != name][:MAX_SOURCES - 1]
        path = self._sources_path(registry, digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file_atomic(path, "".join(f"{n}\n" for n in reversed(names)).encode())

    # -- internals ------------------------------------------------------------------------

    def _read_verified(self, path: Path, digest: str) -> bytes | None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if blob_digest(data) != digest:
            path.unlink(missing_ok=True)
            return None
        return data

    def _ref_path(self, registry: str, name: str, tag: str) -> Path:
        return self.root / "refs" / _host_dir(registry) / name / tag

    def _sources_path(self, registry: str, digest: str) -> Path:
        return self.root / "sources" / _host_dir(registry) / hex_of(digest)

    def _upload_path(self, registry: str, digest: str) -> Path:
        return self.root / "uploads" / _host_dir(registry) / f"{hex_of(digest)}.json"


def _host_dir(registry: str) -> str:
    """A folder name for a registry URL: its host and port, e.g. 127.0.0.1_8000."""
    return re.sub(r"[^A-Za-z0-9.-]", "_", urlsplit(registry).netloc)
