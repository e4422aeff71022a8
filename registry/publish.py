"""Manifests: validate and publish a delta version, read it back byte-exact, delete it.

A manifest PUT is accepted only when its config blob is a valid paramdelta
manifest.json, its layers are exactly the blobs that manifest.json references, and
every one of them is in the repository. Versions are immutable: the same content
again is a no-op, other content under a published (or deleted) version is 409.
``latest`` is not pushed: it is always the newest live version.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from deltaformat.errors import FormatError
from deltaformat.manifest import Manifest as DeltaManifest
from deltaformat.manifest import parse_manifest
from deltaformat.oci import LATEST, OCI_IMAGE_MANIFEST, OciManifest, base_architecture_key, check_layers, parse_oci_manifest, sha256_digest
from registry.auth import Principal
from registry.blobs import DIGEST_RE
from registry.db import Database, utcnow
from registry.db.models import Manifest, ManifestBlob, Version
from registry.db.queries import ensure_repository, get_repository, insert_ignore, linked_size, live_manifest, live_version
from registry.errors import (
    BlobUnknown, DigestInvalid, Immutable, ManifestBlobUnknown, ManifestInvalid, ManifestUnknown, TooLarge, Unsupported,
)
from registry.gc import claim_blobs
from registry.storage import BlobStore

log = logging.getLogger("paramdelta.registry")


@dataclass
class StoredManifest:
    digest: str
    media_type: str
    content: bytes


@dataclass
class VersionManifest:
    digest: str  # of the OCI manifest
    config_digest: str  # of manifest.json
    manifest: DeltaManifest
    data: bytes


@dataclass
class Published:
    digest: str
    created: bool  # False when the same content was already there


class Manifests:
    """Manifest PUT/GET/DELETE, and reading a version's manifest.json."""

    def __init__(self, db: Database, store: BlobStore, max_manifest_bytes: int):
        self.db = db
        self.store = store
        self.max_bytes = max_manifest_bytes
        self.delta_manifest = lru_cache(maxsize=64)(self._read_delta_manifest)  # content-addressed: never stale

    def put(self, name: str, reference: str, content_type: str | None, data: bytes, principal: Principal) -> Published:
        """Validate and store a manifest; tag it when ``reference`` is a version."""
        digest = sha256_digest(data)
        if DIGEST_RE.match(reference) and reference != digest:
            raise DigestInvalid(f"manifest bytes have digest {digest}, not {reference}")
        if content_type and content_type.split(";")[0].strip() not in (OCI_IMAGE_MANIFEST, "application/json"):
            raise Unsupported(f"manifest media type {content_type!r}; this registry stores {OCI_IMAGE_MANIFEST}")
        if reference == LATEST:
            raise Unsupported("'latest' is managed by the registry (it is the newest version); push a version instead")
        oci = _parse(data)
        delta = self._validate(name, oci)
        for attempt in range(3):  # a concurrent push of the same version may win the race; look again
            try:
                with self.db.session() as s:
                    return self._record(s, name, reference, digest, data, oci, delta, principal)
            except IntegrityError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def get(self, name: str, reference: str) -> StoredManifest:
        """A manifest by version, ``latest`` or digest, byte-exact."""
        with self.db.session() as s:
            row = _resolve(s, name, reference)
            return StoredManifest(row.digest, row.media_type, row.content)

    def delete(self, name: str, reference: str, principal: Principal) -> None:
        """By digest: delete the manifest and untag its versions. By version: untag it (the name stays reserved)."""
        if reference == LATEST:
            raise Unsupported("'latest' cannot be deleted; delete the version it points to")
        with self.db.session() as s:
            repo = get_repository(s, name)
            now = utcnow()
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
        """The manifest.json of a version (by version, ``latest`` or digest), parsed and as bytes."""
        with self.db.session() as s:
            row = _resolve(s, name, reference)
            digest, config = row.digest, row.config_digest
        manifest, data = self.delta_manifest(config)
        return VersionManifest(digest, config, manifest, data)

    # -- internals -------------------------------------------------------------------

    def _read_delta_manifest(self, config_digest: str) -> tuple[DeltaManifest, bytes]:
        size = self.store.stat(config_digest)
        if size is None:
            raise BlobUnknown(f"config blob {config_digest} is missing from the store")
        if size > self.max_bytes:
            raise TooLarge(f"manifest.json {config_digest} has {size} bytes, over the limit of {self.max_bytes}")
        data = b"".join(self.store.open_range(config_digest))
        if sha256_digest(data) != config_digest:
            raise ManifestInvalid(f"config blob {config_digest} does not match its digest in the store")
        return parse_manifest(data), data

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
            delta, _ = self.delta_manifest(oci.config.digest)
            check_layers(oci, delta)
        except FormatError as exc:
            raise ManifestInvalid(f"{name}: {exc}") from None
        except (BlobUnknown, FileNotFoundError):  # garbage-collected since the check above
            raise ManifestBlobUnknown(f"blob {oci.config.digest} is no longer in the registry (garbage-collected); push it again",
                                      detail={"digest": oci.config.digest}) from None
        return delta

    def _record(self, s: Session, name: str, reference: str, digest: str, data: bytes,
                oci: OciManifest, delta: DeltaManifest, principal: Principal) -> Published:
        repo = ensure_repository(s, name)
        # Under the GC locks of the manifest and its blobs, which must all still be there (registry.gc).
        claim_blobs(s, repo.id, digest, {oci.config.digest, *(layer.digest for layer in oci.layers)})
        row = s.scalar(select(Manifest).where(Manifest.repository_id == repo.id, Manifest.digest == digest))
        created = row is None or row.deleted_at is not None
        if row is None:
            row = Manifest(repository_id=repo.id, digest=digest, media_type=oci.mediaType or OCI_IMAGE_MANIFEST,
                           size=len(data), content=data, config_digest=oci.config.digest, pushed_by=principal.name,
                           created_at=utcnow(), **index_fields(delta))
            s.add(row)
            s.flush()
            for d in {oci.config.digest, *(layer.digest for layer in oci.layers)}:
                insert_ignore(s, ManifestBlob, manifest_id=row.id, digest=d)
        row.deleted_at = None
        if not DIGEST_RE.match(reference):
            created = self._tag(s, repo.id, name, reference, row, principal) or created
        repo.updated_at = utcnow()
        if created:
            log.info("pushed %s:%s %s (%d blobs, %d bytes) by %s", name, reference, digest,
                     len(oci.layers) + 1, delta.stored_bytes(), principal)
        return Published(digest, created)

    def _tag(self, s: Session, repo_id: int, name: str, version: str, row: Manifest, principal: Principal) -> bool:
        existing = s.scalar(select(Version).where(Version.repository_id == repo_id, Version.name == version))
        if existing is None:
            s.add(Version(repository_id=repo_id, name=version, manifest_id=row.id, pushed_by=principal.name, created_at=utcnow()))
            s.flush()
            return True
        if existing.manifest_id != row.id:
            current = s.get(Manifest, existing.manifest_id)
            state = "was published and deleted" if existing.deleted_at else "is published"
            raise Immutable(
                f"{name}:{version} {state} as {current.digest}; versions are immutable, publish this content as a new version",
                detail={"version": version, "published": current.digest, "pushed": row.digest},
            )
        undeleted = existing.deleted_at is not None
        existing.deleted_at = None
        return undeleted


def index_fields(delta: DeltaManifest) -> dict:
    """The columns search and "deltas for a base" read, from a delta's manifest.json."""
    summary = delta.summary()
    return {
        "description": delta.description, "license": delta.license,
        "base_id": delta.base.id, "base_revision": delta.base.revision, "base_commit": delta.base.commit,
        "base_fingerprint": delta.base.fingerprint, "base_architecture": base_architecture_key(delta),
        "model_type": delta.base.architecture.model_type,
        "post_id": delta.post.id, "post_revision": delta.post.revision, "post_fingerprint": delta.post.fingerprint,
        "codec": delta.codec.delta, "tensors": summary["tensors"], "post_parameters": summary["post_parameters"],
        "stored_bytes": summary["stored_bytes"], "artifact_created_at": _naive_utc(delta.created_at),
    }


def _naive_utc(t: datetime) -> datetime:
    return t.astimezone(timezone.utc).replace(tzinfo=None) if t.tzinfo else t


def _parse(data: bytes) -> OciManifest:
    try:
        return parse_oci_manifest(data)
    except FormatError as exc:
        raise ManifestInvalid(str(exc)) from None


def _resolve(s: Session, name: str, reference: str) -> Manifest:
    repo = get_repository(s, name)
    if DIGEST_RE.match(reference):
        row = live_manifest(s, repo.id, reference)
    else:
        version = live_version(s, repo.id, reference)
        row = s.get(Manifest, version.manifest_id) if version else None
    if row is None:
        raise ManifestUnknown(f"{name} has no manifest {reference}", detail={"name": name, "reference": reference})
    return row
