"""Reading blobs: existence, ranged reads, redirects to the store, cross-repository mounts; and deleting a
blob from a repository (its bytes go when garbage collection finds nothing that needs them)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import delete, select

from deltaformat.oci import NAME_RE, TAG_RE
from registry.db import Database
from registry.db.models import Blob, Manifest, ManifestBlob, RepositoryBlob
from registry.db.queries import ensure_repository, find_repository, get_repository, link_blob, linked_size
from registry.errors import BlobUnknown, DigestInvalid, Immutable, NameInvalid, RangeNotSatisfiable, TagInvalid
from registry.locks import lock_digest
from registry.storage import BlobStore

# The digest algorithms OCI registers, with their hex lengths: sha256 (every client's) and sha512.
ALGORITHMS = {"sha256": 64, "sha512": 128}
DIGEST_RE = re.compile(r"^(?:sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$")
_DIGEST_GRAMMAR = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass
class BlobRead:
    """What a GET of a blob answers: the whole blob or a range of it, streamed or redirected."""

    digest: str
    size: int
    start: int
    end: int  # inclusive
    partial: bool
    redirect: str | None
    chunks: Iterator[bytes] | None

    @property
    def length(self) -> int:
        return self.end - self.start + 1


MAX_NAME = 255  # the repositories.name column, and distribution's limit on a repository name


def check_name(name: str) -> str:
    """The repository name if it fits NAME_PATTERN and the column; NAME_INVALID (the name quoted, never raw) otherwise."""
    if len(name) > MAX_NAME:
        raise NameInvalid(f"repository name has {len(name)} characters; at most {MAX_NAME}")
    if not NAME_RE.fullmatch(name):  # fullmatch: "$" alone also matches before a final newline
        raise NameInvalid(f"repository name {name!r} must be NS/NAME in lowercase letters, digits and . _ -")
    return name


def check_reference(reference: str) -> str:
    """A manifest reference: a digest, or a tag of the version grammar (``latest`` included); TAG_INVALID otherwise."""
    if _DIGEST_GRAMMAR.match(reference):  # algorithm:encoded, OCI's digest grammar: meant as a digest
        return check_digest(reference)
    if not TAG_RE.fullmatch(reference):
        raise TagInvalid(f"reference {reference[:200]!r} is neither a digest nor a tag of [A-Za-z0-9_][A-Za-z0-9._-]{{0,127}}")
    return reference


def check_digest(digest: str) -> str:
    """The digest if well-formed: sha256:<64 hex> or sha512:<128 hex>."""
    if not DIGEST_RE.fullmatch(digest):  # fullmatch: "$" alone also matches before a final newline
        raise DigestInvalid(f"digest {digest[:100]!r} is not sha256:<64 lowercase hex> or sha512:<128 lowercase hex>")
    return digest


def algorithm_of(digest: str) -> str:
    """The algorithm of a checked digest (``sha256`` or ``sha512``)."""
    return check_digest(digest).partition(":")[0]


def hasher(digest: str) -> hashlib._Hash:
    """A fresh hash object of the algorithm ``digest`` names (checked)."""
    return hashlib.new(algorithm_of(digest))


def digest_bytes(data: bytes, algorithm: str = "sha256") -> str:
    """``data``'s digest with ``algorithm`` (one of ALGORITHMS)."""
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end) inclusive for a single ``bytes=`` range, None for no (or a multi-) range; 416 if unsatisfiable."""
    if not header or "," in header:
        return None
    m = _RANGE.match(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        raise RangeNotSatisfiable(f"malformed Range header {header!r}", headers={"Content-Range": f"bytes */{size}"})
    if not m.group(1):  # suffix range: the last N bytes
        n = int(m.group(2))
        if n == 0:
            raise RangeNotSatisfiable("empty suffix range", headers={"Content-Range": f"bytes */{size}"})
        return max(0, size - n), size - 1
    start = int(m.group(1))
    end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
    if start >= size or end < start:
        raise RangeNotSatisfiable(f"range {header} is outside the blob's {size} bytes",
                                  headers={"Content-Range": f"bytes */{size}"})
    return start, end


class Blobs:
    """Blob reads, for GET/HEAD /v2/<name>/blobs/<digest>."""

    def __init__(self, db: Database, store: BlobStore):
        self.db = db
        self.store = store

    def size(self, name: str, digest: str) -> int:
        """The size of a blob readable through repository ``name``, or BLOB_UNKNOWN."""
        check_digest(digest)
        with self.db.session() as s:
            repo = get_repository(s, name)
            size = linked_size(s, repo.id, digest)
        if size is None or self.store.stat(digest) is None:
            raise BlobUnknown(f"blob {digest} is not in {name}", detail={"digest": digest})
        return size

    def present(self, name: str, digests: list[str]) -> dict[str, int]:
        """Of ``digests``, the blobs readable through repository ``name`` (what a HEAD of each would find), with sizes."""
        for digest in digests:
            check_digest(digest)
        with self.db.session() as s:
            repo = find_repository(s, name)
            if repo is None or not digests:
                return {}
            rows = s.execute(select(Blob.digest, Blob.size).join(RepositoryBlob, RepositoryBlob.digest == Blob.digest)
                             .where(RepositoryBlob.repository_id == repo.id, Blob.digest.in_(set(digests))))
            linked = {digest: size for digest, size in rows}
        return {d: size for d, size in linked.items() if self.store.stat(d) is not None}

    def read(self, name: str, digest: str, range_header: str | None, *, body: bool = True) -> BlobRead:
        """Open a blob (or a range of it) for a response; redirect when the store offers a URL."""
        size = self.size(name, digest)
        rng = parse_range(range_header, size) if size else None
        start, end = rng or (0, size - 1)
        redirect = self.store.redirect_url(digest, size) if body else None
        chunks = self.store.open_range(digest, start, end) if body and not redirect and size else None
        return BlobRead(digest, size, start, end, rng is not None, redirect, chunks)

    def mount(self, name: str, digest: str, source: str) -> bool:
        """Link a blob of ``source`` into ``name`` without uploading it; False when ``source`` lacks it."""
        check_digest(digest)
        check_name(source)
        with self.db.session() as s:
            lock_digest(s, digest)  # not deleted by a concurrent garbage collection meanwhile (registry.locks)
            src = find_repository(s, source)
            size = linked_size(s, src.id, digest) if src is not None else None
            if size is None or self.store.stat(digest) is None:
                return False
            link_blob(s, ensure_repository(s, name), digest, size)
        return True

    def delete(self, name: str, digest: str) -> None:
        """Unlink blob ``digest`` from repository ``name``: no longer served from it. A blob a live delta version of
        the repository needs is refused (409): a published version stays whole. The bytes stay until garbage
        collection (registry.gc) finds no live manifest that references them."""
        check_digest(digest)
        with self.db.session() as s:
            lock_digest(s, digest)  # as a publish claiming the blob: one of the two goes first
            repo = get_repository(s, name)
            if linked_size(s, repo.id, digest) is None:
                raise BlobUnknown(f"blob {digest} is not in {name}", detail={"digest": digest})
            needed_by = s.scalar(select(Manifest.digest).join(ManifestBlob, ManifestBlob.manifest_id == Manifest.id).where(
                ManifestBlob.digest == digest, Manifest.repository_id == repo.id, Manifest.is_delta,
                Manifest.deleted_at.is_(None)).limit(1))
            if needed_by is not None:
                raise Immutable(f"blob {digest} belongs to delta {name}@{needed_by}; delete that manifest (by digest) first",
                                detail={"digest": digest, "manifest": needed_by})
            s.execute(delete(RepositoryBlob).where(RepositoryBlob.repository_id == repo.id, RepositoryBlob.digest == digest))
