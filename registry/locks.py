"""The lock protocol that uploads, publishes, blob mounts and deletes share with garbage collection.

Replicas keep running during a GC, so the decisions are made under a per-digest lock
that the writers take too (``lock_digest``: a transaction advisory lock on PostgreSQL;
the database's single write lock on SQLite):

* an upload's commit holds the lock of its digest while it writes the blob to the
  store and records it, and restarts its grace period (``blobs.created_at``);
* a manifest PUT holds the lock of the manifest's digest and of every blob it
  references while it checks that they still exist and records the references
  (``claim_blobs``);
* GC deletes a manifest, or a blob's rows and bytes, only while holding that
  digest's lock, after checking again, inside the lock, that nothing refers to it.

So a publish racing a GC either sees its blobs and makes them referenced before GC
looks again, or (when GC took a blob first, possible only for a blob older than the
grace period that no manifest used) is answered MANIFEST_BLOB_UNKNOWN, and the
client uploads the blob again. A referenced blob is never deleted.
"""

from __future__ import annotations

from sqlalchemy import bindparam, select, text, update
from sqlalchemy.orm import Session

from registry.db.models import Blob, RepositoryBlob
from registry.errors import ManifestBlobUnknown


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
