"""Small queries shared by the services: repositories, blob links, version lookups."""

from __future__ import annotations

from typing import Any

from sqlalchemy import String, bindparam, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from registry.db.models import Base, Blob, Manifest, Repository, RepositoryBlob, Version, utcnow
from registry.errors import NameUnknown

_INSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


def insert_ignore(s: Session, model: type[Base], **values: Any) -> None:
    """INSERT that does nothing when the row exists (race-free, unlike select-then-insert)."""
    insert = _INSERTS.get(s.get_bind().dialect.name)
    if insert is None:
        raise NotImplementedError(f"no INSERT ... ON CONFLICT for {s.get_bind().dialect.name}")
    s.execute(insert(model).values(**values).on_conflict_do_nothing())


def insert_ignore_many(s: Session, model: type[Base], rows: list[dict[str, Any]], batch: int = 5000) -> None:
    """insert_ignore for many rows, in batches (one statement per row would cost seconds for 10^5 tensors)."""
    insert = _INSERTS.get(s.get_bind().dialect.name)
    if insert is None:
        raise NotImplementedError(f"no INSERT ... ON CONFLICT for {s.get_bind().dialect.name}")
    for start in range(0, len(rows), batch):
        s.execute(insert(model).on_conflict_do_nothing(), rows[start:start + batch])


def too_long(model: type[Base], values: dict[str, Any]) -> tuple[str, int, int] | None:
    """The first (column, length, limit) where a text value is longer than its String(n) column. PostgreSQL
    refuses such a value with an error the registry would answer 500 to; SQLite stores it whole."""
    columns = model.__table__.columns
    for key, value in values.items():
        column = columns.get(key)
        limit = getattr(column.type, "length", None) if column is not None and isinstance(column.type, String) else None
        if limit and isinstance(value, str) and len(value) > limit:
            return key, len(value), limit
    return None


def find_repository(s: Session, name: str) -> Repository | None:
    return s.scalar(select(Repository).where(Repository.name == name))


def get_repository(s: Session, name: str) -> Repository:
    """The repository ``name``, or NAME_UNKNOWN."""
    repo = find_repository(s, name)
    if repo is None:
        raise NameUnknown(f"repository {name} is not known to this registry")
    return repo


def ensure_repository(s: Session, name: str) -> Repository:
    """The repository ``name``, created if needed."""
    insert_ignore(s, Repository, name=name, namespace=name.split("/", 1)[0], created_at=utcnow(), updated_at=utcnow())
    return get_repository(s, name)


def link_blob(s: Session, repo: Repository, digest: str, size: int) -> None:
    """Record a committed blob and make it readable through ``repo``."""
    insert_ignore(s, Blob, digest=digest, size=size, created_at=utcnow())
    insert_ignore(s, RepositoryBlob, repository_id=repo.id, digest=digest, created_at=utcnow())


def record_blob(s: Session, name: str, digest: str, size: int) -> None:
    """An upload's commit, under the digest's GC lock: record blob ``digest``, link it into repository ``name``
    (created if needed) and restart its GC grace period (``created_at``), in three statements on the connection
    (what ensure_repository, link_blob and an UPDATE of created_at would do in six, through the ORM)."""
    dialect = s.get_bind().dialect.name
    statements = _RECORD_BLOB.get(dialect)
    if statements is None:
        if dialect not in _INSERTS:
            raise NotImplementedError(f"no INSERT ... ON CONFLICT for {dialect}")
        statements = _RECORD_BLOB[dialect] = _record_blob_statements(_INSERTS[dialect])
    conn = s.connection()
    params = {"name": name, "namespace": name.split("/", 1)[0], "digest": digest, "size": size, "now": utcnow()}
    for statement in statements:
        conn.execute(statement, params)


def _record_blob_statements(insert: Any) -> tuple[Any, ...]:
    """record_blob's statements, built once per dialect (building them costs more than running them)."""
    now = bindparam("now", type_=Blob.created_at.type)
    repo = insert(Repository).values(name=bindparam("name"), namespace=bindparam("namespace"), created_at=now, updated_at=now)
    blob = insert(Blob).values(digest=bindparam("digest"), size=bindparam("size"), created_at=now)
    link = select(Repository.id, bindparam("digest", type_=Blob.digest.type), now).where(Repository.name == bindparam("name"))
    return (repo.on_conflict_do_nothing(),
            blob.on_conflict_do_update(index_elements=[Blob.digest], set_={"created_at": blob.excluded.created_at}),
            insert(RepositoryBlob).from_select(["repository_id", "digest", "created_at"], link).on_conflict_do_nothing())


_RECORD_BLOB: dict[str, tuple[Any, ...]] = {}


def linked_size(s: Session, repo_id: int, digest: str) -> int | None:
    """The size of ``digest`` when it is linked into the repository, else None."""
    return s.scalar(
        select(Blob.size).join(RepositoryBlob, RepositoryBlob.digest == Blob.digest)
        .where(RepositoryBlob.repository_id == repo_id, Blob.digest == digest)
    )


def live_version(s: Session, repo_id: int, name: str) -> Version | None:
    """A version that is not deleted; ``latest`` is the newest such version of a delta (other content's tags,
    a signature's for one, are not what ``latest`` means), unless a repository of other content has a tag
    named ``latest`` (registry.publish keeps the two apart)."""
    q = select(Version).where(Version.repository_id == repo_id, Version.deleted_at.is_(None))
    if name == "latest":
        explicit = s.scalar(q.where(Version.name == name))
        if explicit is not None:
            return explicit
        deltas = q.join(Manifest, Manifest.id == Version.manifest_id).where(Manifest.is_delta)
        return s.scalar(deltas.order_by(Version.id.desc()).limit(1))
    return s.scalar(q.where(Version.name == name))


def live_manifest(s: Session, repo_id: int, digest: str) -> Manifest | None:
    return s.scalar(select(Manifest).where(
        Manifest.repository_id == repo_id, Manifest.digest == digest, Manifest.deleted_at.is_(None)))


def latest_versions():  # noqa: ANN201 - a subquery
    """Subquery (repository_id, version_id) of each repository's newest live delta version."""
    return (
        select(Version.repository_id, func.max(Version.id).label("version_id"))
        .join(Manifest, Manifest.id == Version.manifest_id)
        .where(Version.deleted_at.is_(None), Manifest.is_delta).group_by(Version.repository_id).subquery("latest")
    )
