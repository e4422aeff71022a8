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

Racing the registry. Replicas keep running during a GC, so the decisions are made
under a per-digest lock that the writers take too (``lock_digest``: a transaction
advisory lock on PostgreSQL; the database's single write lock on SQLite):

* an upload's commit holds the lock of its digest while it writes the blob to the
  store and records it, and restarts its grace period (``blobs.created_at``);
* a manifest PUT holds the lock of the manifest's digest and of every blob it
  references while it checks that they still exist and records the references;
* GC deletes a manifest, or a blob's rows and bytes, only while holding that
  digest's lock, after checking again, inside the lock, that nothing refers to it.

So a publish racing a GC either sees its blobs and makes them referenced before GC
looks again, or (when GC took a blob first, possible only for a blob older than the
grace period that no manifest used) is answered MANIFEST_BLOB_UNKNOWN, and the
client uploads the blob again. A referenced blob is never deleted.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, delete, exists, select, text, update
from sqlalchemy.orm import Session, aliased

from registry import process
from registry.db import Database, utcnow
from registry.db.models import Blob, Manifest, ManifestBlob, RepositoryBlob, UploadSession, Version
from registry.errors import ManifestBlobUnknown
from registry.storage import BlobStore

log = logging.getLogger("paramdelta.registry")

MIN_UPLOAD_GRACE_SECONDS = 600  # an upload's driver objects can be younger than its saved state by one request


# -- the lock protocol the writers share --------------------------------------------------


def lock_digest(s: Session, digest: str) -> None:
    """Hold ``digest``'s GC lock until the session's transaction ends."""
    dialect = s.get_bind().dialect.name
    if dialect == "postgresql":
        key = int(digest.partition(":")[2][:15], 16)  # 60 bits of the hex (sha256 or sha512): a positive bigint
        s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
    else:  # SQLite: any write takes the database's one write lock, held until commit
        # On the connection, not through the ORM: its bulk-UPDATE bookkeeping cost more than the statement.
        s.connection().execute(_SQLITE_LOCK, {"locked": digest})


_SQLITE_LOCK = update(Blob).where(Blob.digest == bindparam("locked")).values(size=Blob.size)


def touch_blob(s: Session, digest: str) -> None:
    """In an upload's commit transaction, after recording the blob: its grace period starts again."""
    s.execute(update(Blob).where(Blob.digest == digest).values(created_at=utcnow()))


def claim_blobs(s: Session, repository_id: int, manifest_digest: str, digests: set[str]) -> None:
    """In a manifest PUT's transaction: lock the manifest and its blobs, and check the blobs are still there."""
    lock_digest(s, manifest_digest)
    for d in sorted(digests):  # one order for every writer: no deadlocks
        lock_digest(s, d)
    present = set(s.scalars(select(RepositoryBlob.digest).where(
        RepositoryBlob.repository_id == repository_id, RepositoryBlob.digest.in_(digests))))
    missing = sorted(digests - present)
    if missing:
        raise ManifestBlobUnknown(f"blob {missing[0]} is no longer in the registry (garbage-collected); push it again",
                                  detail={"digest": missing[0]})


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
    stored = {d: (size, mtime) for d, size, mtime in _listing(store)}
    report.blobs_referenced = len(referenced & (set(rows) | set(stored)))
    for digest in sorted((set(rows) | set(stored)) - referenced):
        size = rows[digest][0] if digest in rows else stored[digest][0]
        # The database's time when it has the blob (upload commits restart it); the store's for bytes without a row.
        when = rows[digest][1] if digest in rows else stored[digest][1]
        young = when is None or when >= cutoff
        if young:
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


def _listing(store: BlobStore) -> Any:
    """(digest, size, last modified as naive UTC or None) for every stored blob."""
    with_mtime = getattr(store, "list_with_mtime", None)
    if with_mtime is not None:
        yield from with_mtime()
        return
    path_of = getattr(store, "path", None)
    for digest, size in store.list():
        mtime = None
        if path_of is not None:
            try:
                mtime = _utc(os.stat(path_of(digest)).st_mtime)
            except OSError:
                continue  # deleted meanwhile
        yield digest, size, mtime


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
    live = {row.id: json.loads(row.driver_state or "{}") for row in sessions if row.id not in gone}
    purge = getattr(store, "purge_orphans", None)
    if purge is not None:
        count, freed = purge(live, older_than)
    else:
        count, freed = _purge_upload_files(store, set(live), older_than)
    report.uploads_purged += count
    report.upload_bytes_purged += freed


def _purge_upload_files(store: BlobStore, live: set[str], older_than: datetime) -> tuple[int, int]:
    """The filesystem driver's upload files that no session refers to (``<id>`` and ``<id>.sealed-*``), once
    older than the grace period; and at once a monolithic upload's temp file whose server process is gone."""
    folder = getattr(store, "uploads", None)
    if not isinstance(folder, Path) or not folder.is_dir():
        return 0, 0
    count = freed = 0
    for p in folder.iterdir():
        try:
            st = p.stat()
        except OSError:
            continue
        if p.name.partition(".")[0] not in live and (_utc(st.st_mtime) < older_than or _maker_gone(p.name)):
            p.unlink(missing_ok=True)
            count, freed = count + 1, freed + st.st_size
    return count, freed


def _maker_gone(name: str) -> bool:
    """Whether ``name`` is a monolithic upload's temp file (``put-<process tag>-<hex>``) whose process is gone:
    nothing can finish it (its request died with the process), however young it is."""
    if not name.startswith("put-"):
        return False
    maker, _, _ = name.removeprefix("put-").rpartition("-")
    return bool(maker) and process.gone(maker)


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, timezone.utc).replace(tzinfo=None)
