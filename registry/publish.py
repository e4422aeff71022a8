"""Manifests: validate and publish a delta version (or any other OCI content), read it back byte-exact, delete it.

A delta (registry.content tells which) is accepted only when its config blob is a
valid paramdelta manifest.json, its layers are exactly the blobs that manifest.json
references, and every one of them is in the repository. Delta versions are immutable:
the same content again is a no-op, other content under a published (or deleted)
version is 409. ``latest`` is not pushed: it is always the newest live delta version.

Any other image manifest, index or artifact is stored as distribution stores it: its
shape checked (registry.content), its config and layers (an index: its manifests) in
the repository. Its tags move when pushed again, as OCI tags do; a tag that names (or
named) a delta version never does.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from deltaformat.errors import FormatError
from deltaformat.manifest import CARRIED_SETTINGS_FILES, check_carried_content, decode_carried, parse_manifest
from deltaformat.manifest import Manifest as DeltaManifest
from deltaformat.oci import LATEST, OCI_IMAGE_MANIFEST, OciManifest, base_architecture_key, check_layers, parse_oci_manifest
from registry.auth import Principal
from registry.blobs import DIGEST_RE, algorithm_of, check_name, check_reference, digest_bytes
from registry.content import Content, read_content
from registry.db import Database, as_stored, utcnow
from registry.db.models import Manifest, ManifestBlob, ManifestTensor, RepositoryBlob, Version
from registry.db.queries import (
    ensure_repository,
    find_repository,
    get_repository,
    insert_ignore,
    insert_ignore_many,
    linked_size,
    live_manifest,
    live_version,
    too_long,
)
from registry.errors import (
    BlobUnknown,
    DigestInvalid,
    Immutable,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    TagInvalid,
    TooLarge,
    Unsupported,
)
from registry.locks import claim_blobs, lock_digest
from registry.storage import BlobStore

log = logging.getLogger("paramdelta.registry")


@dataclass
class StoredManifest:
    digest: str
    media_type: str
    content: bytes


MAX_SUMMARY_BYTES = 256 << 10  # the model descriptions a version's page shows; real ones take a few KiB
FILES_SHOWN = 100  # carried files listed in a version's summary (the count is always whole)


@dataclass
class VersionManifest:
    digest: str  # of the OCI manifest
    config_digest: str  # of manifest.json
    data: bytes  # manifest.json, byte-exact (never parsed on a read)


@dataclass
class VersionSummary:
    """A version as its page and the API show it, from the database alone."""

    digest: str
    config_digest: str
    version: str | None  # None when asked by digest
    manifest_id: int
    summary: dict[str, Any]
    tensors: int
    post_parameters: int
    stored_bytes: int


class ByteLRU:
    """A least-recently-used map of bytes bounded by their total size, not their number: a count bound lets
    64 manifests of 16 MiB each pin 1 GiB. Thread-safe (routes run in a thread pool)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: str, value: bytes) -> None:
        if len(value) > self.max_bytes:  # would evict everything and still not fit
            return
        with self._lock:
            old = self._items.pop(key, None)
            self.bytes -= len(old) if old is not None else 0
            self._items[key] = value
            self.bytes += len(value)
            while self.bytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self.bytes -= len(evicted)


@dataclass
class Published:
    digest: str
    created: bool  # False when the same content was already there
    subject: str | None = None  # the digest its subject names (answered as OCI-Subject)


class Manifests:
    """Manifest PUT/GET/DELETE, and reading a version's manifest.json."""

    def __init__(self, db: Database, store: BlobStore, max_manifest_bytes: int, cache_bytes: int = 64 << 20):
        self.db = db
        self.store = store
        self.max_bytes = max_manifest_bytes
        self.config_cache = ByteLRU(cache_bytes)  # manifest.json bytes by digest: content-addressed, never stale

    def put(self, name: str, reference: str, content_type: str | None, data: bytes, principal: Principal) -> Published:
        """Validate and store a manifest; tag it when ``reference`` is a tag. By digest, the digest's algorithm
        (sha256 or sha512) is the one the manifest is stored under."""
        check_name(name)
        check_reference(reference)
        by_digest = DIGEST_RE.match(reference) is not None
        digest = digest_bytes(data, algorithm_of(reference) if by_digest else "sha256")
        if by_digest and reference != digest:
            raise DigestInvalid(f"manifest bytes have digest {digest}, not {reference}")
        content = read_content(data, content_type)
        if reference == LATEST and content.is_delta:
            raise Unsupported("'latest' is managed by the registry (it is the newest version); push a version instead")
        if content.is_delta:
            if content.media_type != OCI_IMAGE_MANIFEST:
                raise Unsupported(f"a delta is an {OCI_IMAGE_MANIFEST}, not {content.media_type}")
            oci = _parse(data)
            content.subject = oci.subject.digest if oci.subject else None
            delta = self._validate(name, oci)
            _check_identity(name, reference, delta)
        else:
            self._check_references(name, content)
        for attempt in range(3):  # a concurrent push of the same version may win the race; look again
            try:
                with self.db.session() as s:
                    if content.is_delta:
                        return self._record(s, name, reference, digest, data, oci, delta, principal, content)
                    return self._record_content(s, name, reference, digest, data, content, principal)
            except IntegrityError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def get(self, name: str, reference: str) -> StoredManifest:
        """A manifest by version, ``latest`` or digest, byte-exact. A tag outside the tag grammar names no manifest:
        MANIFEST_UNKNOWN, as distribution answers (a digest outside its grammar stays DIGEST_INVALID)."""
        try:
            check_reference(reference)
        except TagInvalid as exc:
            raise ManifestUnknown(f"{name} has no manifest {reference[:200]!r}: {exc.message}") from None
        with self.db.session() as s:
            row = _resolve(s, name, reference)
            return StoredManifest(row.digest, row.media_type, row.content)

    def delete(self, name: str, reference: str, principal: Principal) -> None:
        """By digest: delete the manifest and untag its versions. By version: untag it (the name stays reserved)."""
        check_reference(reference)
        with self.db.session() as s:
            repo = get_repository(s, name)
            now = utcnow()
            if reference == LATEST and _explicit_latest(s, repo.id) is None:
                raise Unsupported("'latest' cannot be deleted; delete the version it points to")
            if DIGEST_RE.match(reference):
                row = _resolve(s, name, reference)
                row.deleted_at = now
                versions = s.scalars(select(Version).where(Version.manifest_id == row.id, Version.deleted_at.is_(None)))
            else:
                version = live_version(s, repo.id, reference)
                if version is None:
                    raise ManifestUnknown(f"{name} has no version {reference}")
                versions = [version]
            for v in versions:
                v.deleted_at = now
            repo.updated_at = now
        log.info("deleted %s:%s by %s", name, reference, principal)

    def version_manifest(self, name: str, reference: str) -> VersionManifest:
        """The manifest.json of a version (by version, ``latest`` or digest), as bytes: read, checked, not parsed."""
        check_reference(reference)
        with self.db.session() as s:
            row = _resolve(s, name, reference, deltas_only=True)
            digest, config = row.digest, row.config_digest
        data = self.config_cache.get(config)
        if data is None:
            data = self._read_config(config)
            self.config_cache.put(config, data)
        return VersionManifest(digest, config, data)

    def version_summary(self, name: str, reference: str) -> VersionSummary:
        """A version's summary from the database. A manifest pushed before summaries were stored is summarised
        on its first read, once, and stored."""
        check_reference(reference)
        with self.db.session() as s:
            row, version = _resolve_version(s, name, reference, deltas_only=True)
            found = VersionSummary(row.digest, row.config_digest, version, row.id, {}, row.tensors, row.post_parameters,
                                   row.stored_bytes)
            stored = row.summary
        if stored is None:
            stored = self._backfill_summary(found.manifest_id, found.config_digest)
        found.summary = json.loads(stored)
        return found

    # -- internals -------------------------------------------------------------------

    def _backfill_summary(self, manifest_id: int, config_digest: str) -> str:
        try:
            summary, tensors = summarize(parse_manifest(self._read_config(config_digest)))
        except (FormatError, RecursionError) as exc:
            raise ManifestInvalid(f"manifest.json {config_digest}: {str(exc)[:300]}") from None
        with self.db.session() as s:
            insert_ignore_many(s, ManifestTensor, [{"manifest_id": manifest_id, **t} for t in tensors])
            s.get(Manifest, manifest_id).summary = summary
        return summary

    def _read_config(self, config_digest: str) -> bytes:
        return self._read_small_blob(config_digest, "manifest.json")

    def _read_small_blob(self, digest: str, what: str) -> bytes:
        """A blob read whole, when it is at most the manifest cap, checked against its digest."""
        size = self.store.stat(digest)
        if size is None:
            raise BlobUnknown(f"{what} blob {digest} is missing from the store")
        if size > self.max_bytes:
            raise TooLarge(f"{what} {digest} has {size} bytes, over the limit of {self.max_bytes}")
        data = b"".join(self.store.open_range(digest))
        if digest_bytes(data, algorithm_of(digest)) != digest:
            raise ManifestInvalid(f"{what} blob {digest} does not match its digest in the store")
        return data

    def _check_carried_settings(self, delta: DeltaManifest) -> None:
        """Carried settings files (tokenizer_config.json, ...) must not name code to import (``auto_map``):
        the path allow-list is in the manifest model, this is the part only their bytes can tell."""
        for f in delta.files:
            if f.path in CARRIED_SETTINGS_FILES:
                check_carried_content(f.path, decode_carried(f, self._read_small_blob(f.digest, f.path)))  # v2: zstd

    def _validate(self, name: str, oci: OciManifest) -> DeltaManifest:
        with self.db.session() as s:
            repo = get_repository(s, name)
            for desc in [oci.config, *oci.layers]:
                size = linked_size(s, repo.id, desc.digest)
                if size is None:
                    raise ManifestBlobUnknown(f"blob {desc.digest} is not in {name}; push it first", detail={"digest": desc.digest})
                if size != desc.size:
                    raise ManifestInvalid(f"blob {desc.digest} has {size} bytes, the manifest says {desc.size}")
        try:
            delta = parse_manifest(self._read_config(oci.config.digest))  # once per push: reads never parse it
            check_layers(oci, delta)
            self._check_carried_settings(delta)
        except FormatError as exc:
            raise ManifestInvalid(f"{name}: {exc}") from None
        except RecursionError:  # deltaformat refuses deep nesting itself; this keeps a 400 whatever its parser does
            raise ManifestInvalid(f"{name}: manifest.json {oci.config.digest} is nested too deeply") from None
        except (BlobUnknown, FileNotFoundError):  # garbage-collected since the check above
            raise ManifestBlobUnknown(f"blob {oci.config.digest} is no longer in the registry (garbage-collected); push it again",
                                      detail={"digest": oci.config.digest}) from None
        return delta

    def _check_references(self, name: str, content: Content) -> None:
        """Content that is not a delta: its config and layers must be blobs of the repository, an index's manifests
        manifests of it (as distribution checks them); MANIFEST_BLOB_UNKNOWN names the first missing one."""
        blobs, manifests = {d.digest for d in content.blobs}, {d.digest for d in content.manifests}
        with self.db.session() as s:  # one query per kind, not per descriptor: an index may list thousands
            repo = find_repository(s, name)
            linked = set() if repo is None or not blobs else set(s.scalars(select(RepositoryBlob.digest).where(
                RepositoryBlob.repository_id == repo.id, RepositoryBlob.digest.in_(blobs))))
            live = set() if repo is None or not manifests else set(s.scalars(select(Manifest.digest).where(
                Manifest.repository_id == repo.id, Manifest.digest.in_(manifests), Manifest.deleted_at.is_(None))))
        for desc in content.blobs:
            if desc.digest not in linked:
                raise ManifestBlobUnknown(f"blob {desc.digest} is not in {name}; push it first", detail={"digest": desc.digest})
        for desc in content.manifests:
            if desc.digest not in live:
                raise ManifestBlobUnknown(f"manifest {desc.digest} is not in {name}; push it first",
                                          detail={"digest": desc.digest})

    def _record_content(self, s: Session, name: str, reference: str, digest: str, data: bytes, content: Content,
                        principal: Principal) -> Published:
        """Store content that is not a delta (its references checked by ``_check_references``)."""
        repo = ensure_repository(s, name)
        if reference == LATEST and _holds_deltas(s, repo.id):
            raise Unsupported(f"'latest' is managed by the registry in {name}, which holds deltas (it is the newest "
                              "version); push this under another tag")
        blobs = {d.digest for d in content.blobs}
        claim_blobs(s, repo.id, digest, blobs)  # under the GC locks, as a delta's (registry.locks)
        for desc in content.manifests:  # still there under the lock: GC deletes a manifest only under its lock
            lock_digest(s, desc.digest)
            if live_manifest(s, repo.id, desc.digest) is None:
                raise ManifestBlobUnknown(f"manifest {desc.digest} is no longer in {name}; push it again",
                                          detail={"digest": desc.digest})
        row = s.scalar(select(Manifest).where(Manifest.repository_id == repo.id, Manifest.digest == digest))
        created = row is None or row.deleted_at is not None
        if row is None:
            row = Manifest(repository_id=repo.id, digest=digest, media_type=content.media_type, size=len(data), content=data,
                           config_digest=content.config, pushed_by=principal.name, created_at=utcnow(), is_delta=False,
                           artifact_type=content.artifact_type, subject_digest=content.subject)
            s.add(row)
            s.flush()
            # An index's manifests are kept with the blobs it needs: garbage collection keeps what a live one lists.
            insert_ignore_many(s, ManifestBlob, [{"manifest_id": row.id, "digest": d}
                                                 for d in sorted(blobs | {m.digest for m in content.manifests})])
        row.deleted_at = None
        if not DIGEST_RE.match(reference):
            created = self._tag(s, repo.id, name, reference, row, principal) or created
        repo.updated_at = utcnow()
        if created:
            log.info("pushed %s:%s %s (%s) by %s", name, reference, digest, content.media_type, principal)
        return Published(digest, created, content.subject)

    def _record(self, s: Session, name: str, reference: str, digest: str, data: bytes,
                oci: OciManifest, delta: DeltaManifest, principal: Principal, content: Content) -> Published:
        repo = ensure_repository(s, name)
        # Under the GC locks of the manifest and its blobs, which must all still be there (registry.locks).
        claim_blobs(s, repo.id, digest, {oci.config.digest, *(layer.digest for layer in oci.layers)})
        row = s.scalar(select(Manifest).where(Manifest.repository_id == repo.id, Manifest.digest == digest))
        created = row is None or row.deleted_at is not None
        counts = None
        if row is None:
            counts = delta.summary()  # once per push: the version's summary, its search columns and the log line read it
            summary, tensors = summarize(delta, counts)
            row = Manifest(repository_id=repo.id, digest=digest, media_type=oci.mediaType or OCI_IMAGE_MANIFEST,
                           size=len(data), content=data, config_digest=oci.config.digest, pushed_by=principal.name,
                           created_at=utcnow(), summary=summary, is_delta=True, artifact_type=content.artifact_type,
                           subject_digest=content.subject, **index_fields(delta, counts))
            s.add(row)
            s.flush()
            for d in {oci.config.digest, *(layer.digest for layer in oci.layers)}:
                insert_ignore(s, ManifestBlob, manifest_id=row.id, digest=d)
            insert_ignore_many(s, ManifestTensor, [{"manifest_id": row.id, **t} for t in tensors])
        row.deleted_at = None
        if not DIGEST_RE.match(reference):
            created = self._tag(s, repo.id, name, reference, row, principal) or created
        repo.updated_at = utcnow()
        if created:
            stored = counts["stored_bytes"] if counts is not None else delta.stored_bytes()
            log.info("pushed %s:%s %s (%d blobs, %d bytes) by %s", name, reference, digest, len(oci.layers) + 1, stored,
                     principal)
        return Published(digest, created, content.subject)

    def _tag(self, s: Session, repo_id: int, name: str, version: str, row: Manifest, principal: Principal) -> bool:
        if row.is_delta and (other := _explicit_latest(s, repo_id)) is not None:
            raise Unsupported(f"{name} has a 'latest' tag of other content ({other.digest}); in a repository of deltas "
                              f"'latest' names the newest version: delete that tag first (DELETE /v2/{name}/manifests/latest)")
        existing = s.scalar(select(Version).where(Version.repository_id == repo_id, Version.name == version))
        if existing is None:
            s.add(Version(repository_id=repo_id, name=version, manifest_id=row.id, pushed_by=principal.name, created_at=utcnow()))
            s.flush()
            return True
        if existing.manifest_id != row.id:
            current = s.get(Manifest, existing.manifest_id)
            if not current.is_delta:  # an OCI tag moves; the new row's id makes it the newest
                s.delete(existing)
                s.flush()
                s.add(Version(repository_id=repo_id, name=version, manifest_id=row.id, pushed_by=principal.name,
                              created_at=utcnow()))
                s.flush()
                return True
            state = "was published and deleted" if existing.deleted_at else "is published"
            raise Immutable(
                f"{name}:{version} {state} as {current.digest}; versions are immutable, publish this content as a new version",
                detail={"version": version, "published": current.digest, "pushed": row.digest},
            )
        undeleted = existing.deleted_at is not None
        existing.deleted_at = None
        return undeleted


# manifest.json's name for each indexed column, for errors that name the field a pusher wrote.
_SOURCE_FIELDS = {"base_id": "base.id", "base_revision": "base.revision", "base_commit": "base.commit",
                  "model_type": "base.architecture.model_type", "post_id": "post.id", "post_revision": "post.revision",
                  "codec": "codec.delta", "license": "license"}


def index_fields(delta: DeltaManifest, counts: dict[str, Any] | None = None) -> dict:
    """The columns search and "deltas for a base" read, from a delta's manifest.json; MANIFEST_INVALID for a
    value longer than its column (PostgreSQL would refuse it with a 500; SQLite would store it).
    ``counts``: ``delta.summary()`` where the caller has it already."""
    fields = _index_fields(delta, delta.summary() if counts is None else counts)
    if (culprit := too_long(Manifest, fields)) is not None:
        column, length, limit = culprit
        raise ManifestInvalid(f"manifest.json field {_SOURCE_FIELDS.get(column, column)} has {length} characters; "
                              f"this registry stores at most {limit}")
    return fields


def _index_fields(delta: DeltaManifest, summary: dict[str, Any]) -> dict:
    return {
        "description": delta.description, "license": delta.license,
        "base_id": delta.base.id, "base_revision": delta.base.revision, "base_commit": delta.base.commit,
        "base_fingerprint": delta.base.fingerprint, "base_architecture": base_architecture_key(delta),
        "model_type": delta.base.architecture.model_type,
        "post_id": delta.post.id, "post_revision": delta.post.revision, "post_fingerprint": delta.post.fingerprint,
        "codec": delta.codec.delta, "tensors": summary["tensors"], "post_parameters": summary["post_parameters"],
        "stored_bytes": summary["stored_bytes"], "artifact_created_at": as_stored(delta.created_at),
    }


def summarize(delta: DeltaManifest, counts: dict[str, Any] | None = None) -> tuple[str, list[dict[str, Any]]]:
    """What a version's page and API show, computed once at push: the summary (JSON) and one row per tensor.
    ``counts``: ``delta.summary()`` where the caller has it already."""
    counts = delta.summary() if counts is None else counts
    summary = {
        "format_version": delta.format_version, "created_at": delta.created_at.isoformat(),
        "description": delta.description, "license": delta.license,
        "base": delta.base.model_dump(mode="json"), "post": delta.post.model_dump(mode="json"),
        "base_shapes_key": base_architecture_key(delta), "codec": delta.codec.model_dump(mode="json"),
        "kinds": counts["kinds"], "bytes_per_parameter": counts["bytes_per_parameter"],
        "patched_elements": counts["patched_elements"], "file_count": len(delta.files),
        "files": [f.model_dump(mode="json") for f in delta.files[:FILES_SHOWN]],
        # lossy: null for an exact delta; else its preset and recorded errors against the exact Δ
        "lossy": None if counts["exact"] else {"preset": counts["lossy_preset"], **counts["lossy_errors"]},
    }
    text = json.dumps(summary, separators=(",", ":"))
    if len(text) > MAX_SUMMARY_BYTES:
        raise ManifestInvalid(f"manifest.json's model descriptions (base, post, codec) take {len(text)} bytes; "
                              f"this registry shows at most {MAX_SUMMARY_BYTES}")
    return text, [_tensor_row(i, t) for i, t in enumerate(delta.tensors)]


def _tensor_row(position: int, t: Any) -> dict[str, Any]:
    info = t.post or t.base
    stored = sum(c.size for st in (t.delta, t.values) if st for c in st.chunks) + (t.patch.size if t.patch else 0)
    return {"position": position, "name": t.name, "kind": t.kind, "dtype": info.dtype if info else None,
            "shape": json.dumps(info.shape) if info else None, "stored_bytes": stored}


def _check_identity(name: str, reference: str, delta: DeltaManifest) -> None:
    """What manifest.json says it is must be where it is pushed: ``evil/x:7`` may not show as ``meta/llama3-inst:1``."""
    tag = None if DIGEST_RE.match(reference) else reference
    if delta.name is not None and delta.name != name:
        raise ManifestInvalid(f"manifest.json names {delta.name}, but it is pushed to repository {name}; "
                              "push it to its own name (or extract it again with --name)")
    if tag is not None and delta.version is not None and delta.version != tag:
        raise ManifestInvalid(f"manifest.json names version {delta.version}, but it is pushed as {name}:{tag}; "
                              "push it as its own version (or extract it again with --version)")


def _explicit_latest(s: Session, repo_id: int) -> Manifest | None:
    """The manifest of a live tag named ``latest`` (pushed content that is not a delta, in a repository of none)."""
    return s.scalar(select(Manifest).join(Version, Version.manifest_id == Manifest.id).where(
        Version.repository_id == repo_id, Version.name == LATEST, Version.deleted_at.is_(None)))


def _holds_deltas(s: Session, repo_id: int) -> bool:
    """Whether a delta version (live or deleted) was ever published in the repository."""
    return s.scalar(select(Version.id).join(Manifest, Manifest.id == Version.manifest_id).where(
        Version.repository_id == repo_id, Manifest.is_delta).limit(1)) is not None




def _parse(data: bytes) -> OciManifest:
    try:
        return parse_oci_manifest(data)
    except FormatError as exc:
        raise ManifestInvalid(str(exc)) from None


def _resolve(s: Session, name: str, reference: str, *, deltas_only: bool = False) -> Manifest:
    return _resolve_version(s, name, reference, deltas_only=deltas_only)[0]


def _resolve_version(s: Session, name: str, reference: str, *, deltas_only: bool = False) -> tuple[Manifest, str | None]:
    """The live manifest a reference names, and its version (``latest`` resolved; None when asked by digest).
    ``deltas_only``: MANIFEST_UNKNOWN for content that is not a delta (what delta pages and the native API show)."""
    repo = get_repository(s, name)
    version_name = None
    if DIGEST_RE.match(reference):
        row = live_manifest(s, repo.id, reference)
    else:
        version = live_version(s, repo.id, reference)
        row = s.get(Manifest, version.manifest_id) if version else None
        version_name = version.name if version else None
    if row is None:
        raise ManifestUnknown(f"{name} has no manifest {reference}", detail={"name": name, "reference": reference})
    if deltas_only and not row.is_delta:
        raise ManifestUnknown(f"{name}:{reference} is {row.media_type}, not a paramdelta delta",
                              detail={"name": name, "reference": reference})
    return row, version_name
