"""Garbage collection: reclaim the bytes no live manifest needs, safely, while the registry serves.

    paramdelta gc [--dry-run] [--grace SECONDS]

Deleting a version only untags it. A run of ``collect``:

1. deletes *untagged* manifests (no live version points to them) created before the
   grace cutoff, as ``docker registry garbage-collect --delete-untagged`` does; except
   those a live index of their repository lists and the referrers (signatures, SBOMs)
   of a live manifest of their repository: they go with the index or subject, at the
   next run after it;
2. sweeps blobs that no live manifest references, unless the blob was committed
   (or committed again) within the grace period: a push uploads its blobs first
   and publishes the manifest last, so its blobs are unreferenced in between;
3. purges upload sessions idle past their expiry, and the driver's leftovers that
   no session refers to (aborted S3 multipart uploads, staged objects, stray
   upload files) once they are older than the grace period (never less than
   ``MIN_UPLOAD_GRACE_SECONDS``).

With ``dry_run`` it deletes nothing and reports what it would reclaim.

Racing the registry: replicas keep running during a GC, so it decides under the
per-digest locks that the writers take too (registry.locks explains the protocol).
It reaches the bytes only through the blob-driver interface (registry.storage.base):
``blobs`` to list them, ``delete``, and ``purge_uploads`` for what uploads left.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import delete, exists, select, update
from sqlalchemy.orm import Session, aliased

from registry.db import Database, as_stored, utcnow
from registry.db.models import Blob, Manifest, ManifestBlob, RepositoryBlob, UploadSession, Version
from registry.locks import lock_digest
from registry.storage import BlobStore, UploadState

log = logging.getLogger("paramdelta.registry")

MIN_UPLOAD_GRACE_SECONDS = 600  # an upload's driver objects can be younger than its saved state by one request


# -- the collector ------------------------------------------------------------------------


@dataclass
class GcReport:
    """What a run did (or, with ``dry_run``, would do)."""

    dry_run: bool
    grace_seconds: int
    manifests_deleted: int = 0
    blobs_deleted: int = 0
    bytes_reclaimed: int = 0
    blobs_referenced: int = 0
    blobs_in_grace: int = 0
    uploads_purged: int = 0
    upload_bytes_purged: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        return (f"gc{' (dry run)' if self.dry_run else ''}: {verb} {self.manifests_deleted} untagged manifest(s) and "
                f"{self.blobs_deleted} blob(s), {'reclaimable' if self.dry_run else 'reclaimed'} {self.bytes_reclaimed:,} bytes; "
                f"{self.blobs_referenced} referenced blob(s) kept, {self.blobs_in_grace} kept within the {self.grace_seconds} s "
                f"grace period; {'would purge' if self.dry_run else 'purged'} {self.uploads_purged} stale upload(s) "
                f"({self.upload_bytes_purged:,} bytes)")


def collect(db: Database, store: BlobStore, *, grace_seconds: int, dry_run: bool = False,
            upload_grace_seconds: int | None = None, settings: Any = None) -> GcReport:
    """One garbage collection over ``db`` and ``store`` (see the module docstring)."""
    now = utcnow()
    cutoff = now - timedelta(seconds=grace_seconds)
    report = GcReport(dry_run=dry_run, grace_seconds=grace_seconds)
    doomed = _untagged_manifests(db, cutoff, report)
    _sweep_blobs(db, store, cutoff, report, doomed)
    upload_grace = max(grace_seconds, MIN_UPLOAD_GRACE_SECONDS) if upload_grace_seconds is None else upload_grace_seconds
    _purge_uploads(db, store, now, now - timedelta(seconds=upload_grace), report, settings)
    log.info("%s", report.summary())
    return report


def _untagged_manifests(db: Database, cutoff: datetime, report: GcReport) -> set[int]:
    """Delete untagged manifests older than the cutoff; in a dry run, return the ids it would delete."""
    live_version = exists(select(Version.id).where(Version.manifest_id == Manifest.id, Version.deleted_at.is_(None)))
    other = aliased(Manifest)
    listed = exists(select(ManifestBlob.manifest_id).join(other, other.id == ManifestBlob.manifest_id).where(
        ManifestBlob.digest == Manifest.digest, other.repository_id == Manifest.repository_id, other.id != Manifest.id,
        other.deleted_at.is_(None)))  # by a live index of the repository
    subject_live = exists(select(other.id).where(
        other.digest == Manifest.subject_digest, other.repository_id == Manifest.repository_id, other.deleted_at.is_(None)))
    untagged = (Manifest.deleted_at.is_(None), Manifest.created_at < cutoff, ~live_version, ~listed, ~subject_live)
    with db.session() as s:
        rows = list(s.execute(select(Manifest.id, Manifest.digest).where(*untagged)))
    if report.dry_run:
        report.manifests_deleted = len(rows)
        return {manifest_id for manifest_id, _ in rows}
    for manifest_id, digest in rows:
        with db.session() as s:
            lock_digest(s, digest)
            done = s.execute(update(Manifest).where(Manifest.id == manifest_id, *untagged)
                             .values(deleted_at=utcnow())).rowcount
            report.manifests_deleted += done
    return set()


def _referenced(s: Session, digest: str | None = None) -> Any:
    q = select(ManifestBlob.digest).join(Manifest, Manifest.id == ManifestBlob.manifest_id).where(Manifest.deleted_at.is_(None))
    return q if digest is None else q.where(ManifestBlob.digest == digest).limit(1)


def _sweep_blobs(db: Database, store: BlobStore, cutoff: datetime, report: GcReport, doomed: set[int]) -> None:
    with db.session() as s:
        q = _referenced(s)
        if doomed:  # a dry run: the manifests it would delete reference nothing
            q = q.where(Manifest.id.not_in(doomed))
        referenced = set(s.scalars(q))
        rows = {d: (size, created) for d, size, created in s.execute(select(Blob.digest, Blob.size, Blob.created_at))}
    # Naive UTC, as the database's times: the store's write time decides for bytes that have no row.
    stored = {b.digest: (b.size, as_stored(b.modified)) for b in store.blobs()}
    report.blobs_referenced = len(referenced & (set(rows) | set(stored)))
    for digest in sorted((set(rows) | set(stored)) - referenced):
        size = rows[digest][0] if digest in rows else stored[digest][0]
        # The database's time when it has the blob (upload commits restart it); the store's for bytes without a row.
        when = rows[digest][1] if digest in rows else stored[digest][1]
        if when >= cutoff:
            report.blobs_in_grace += 1
            continue
        if report.dry_run:
            report.blobs_deleted += 1
            report.bytes_reclaimed += size
            continue
        with db.session() as s:
            lock_digest(s, digest)  # an upload committing this digest, or a publish claiming it, waits for us
            if s.scalar(_referenced(s, digest)) is not None:
                report.blobs_referenced += 1
                continue
            created = s.scalar(select(Blob.created_at).where(Blob.digest == digest))
            if created is not None and created >= cutoff:
                report.blobs_in_grace += 1
                continue
            s.execute(delete(RepositoryBlob).where(RepositoryBlob.digest == digest))
            s.execute(delete(Blob).where(Blob.digest == digest))
            store.delete(digest)  # last: if it fails, the transaction rolls back and nothing changed
        report.blobs_deleted += 1
        report.bytes_reclaimed += size


def _purge_uploads(db: Database, store: BlobStore, now: datetime, older_than: datetime, report: GcReport,
                   settings: Any) -> None:
    with db.session() as s:
        sessions = list(s.execute(select(UploadSession.id, UploadSession.size, UploadSession.expires_at,
                                         UploadSession.lease_expires_at, UploadSession.driver_state)))
    # Idle past the expiry (PARAMDELTA_UPLOAD_TTL_SECONDS) and held by no live request: as Uploads.purge_expired.
    expired = [row for row in sessions if row.expires_at < now and (row.lease_expires_at is None or row.lease_expires_at < now)]
    report.uploads_purged += len(expired)
    report.upload_bytes_purged += sum(row.size for row in expired)
    if report.dry_run:
        return
    if expired:
        from registry.settings import Settings
        from registry.uploads import Uploads

        Uploads(db, store, settings or Settings()).purge_expired()
    gone = {row.id for row in expired}
    live = {row.id: UploadState(row.size, json.loads(row.driver_state or "{}")) for row in sessions if row.id not in gone}
    purged = store.purge_uploads(live, older_than.replace(tzinfo=timezone.utc))
    report.uploads_purged += purged.count
    report.upload_bytes_purged += purged.bytes


