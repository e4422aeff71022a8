"""Read-side queries for the native API and the pages: search, one delta, one version,
deltas for a base, tag lists. Lists use keyset (cursor) pagination: stable while
new versions are published, and as cheap on page 100 as on page 1."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, case, false, func, or_, select, tuple_

from deltaformat.oci import LATEST, base_architecture_key, registry_prefix
from registry.db import Database
from registry.db.models import Manifest, Repository, Version
from registry.db.queries import get_repository, latest_versions
from registry.errors import InvalidRequest
from registry.publish import Manifests
from registry.schemas import (
    Commands, CompatibleVersion, DeltaDetail, DeltaSummary, Page, TensorSummary, VersionDetail, VersionInfo,
)

MAX_LIMIT = 100
# sort name -> (key columns, descending); the last column makes the key unique.
SORTS: dict[str, tuple[tuple[Any, ...], bool]] = {
    "updated": ((Version.id,), True),
    "name": ((Repository.name,), False),
    "size": ((Manifest.stored_bytes, Repository.id), False),
    "parameters": ((Manifest.post_parameters, Repository.id), True),
}


@dataclass
class SearchQuery:
    """Filters for a delta search; all optional."""

    text: str | None = None
    base: str | None = None  # base model id, exact (case-insensitive)
    architecture: str | None = None  # config.json model_type, e.g. "llama"
    namespace: str | None = None
    sort: str = "updated"
    limit: int = 20
    cursor: str | None = None


class Catalog:
    """Queries over published versions; read-only."""

    def __init__(self, db: Database, manifests: Manifests):
        self.db = db
        self.manifests = manifests

    def search(self, query: SearchQuery, visible: set[str] | None = None) -> Page[DeltaSummary]:
        """Deltas (one row each, described by their newest version) matching ``query``."""
        if query.sort not in SORTS:
            raise InvalidRequest(f"sort {query.sort!r}: choose one of {', '.join(SORTS)}")
        columns, descending = SORTS[query.sort]
        latest = latest_versions()
        q = (select(Repository, Version, Manifest)
             .join(latest, latest.c.repository_id == Repository.id)
             .join(Version, Version.id == latest.c.version_id)
             .join(Manifest, Manifest.id == Version.manifest_id))
        if query.text:
            pattern = "%" + query.text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            q = q.where(or_(*(func.lower(c).like(pattern, escape="\\") for c in
                              (Repository.name, Manifest.description, Manifest.base_id, Manifest.post_id))))
        if query.base:
            q = q.where(func.lower(Manifest.base_id) == query.base.lower())
        if query.architecture:
            q = q.where(func.lower(Manifest.model_type) == query.architecture.lower())
        if query.namespace:
            q = q.where(Repository.namespace == query.namespace)
        q = _visible(q, visible)
        rows, next_cursor = _page(self.db, q, columns, descending, query.limit, query.cursor,
                                  lambda r: [_key_value(c, r) for c in columns])
        return Page[DeltaSummary](items=[_summary(*r) for r in rows], next_cursor=next_cursor)

    def delta(self, name: str) -> DeltaDetail:
        """One delta with its live versions (newest first) and tags."""
        with self.db.session() as s:
            repo = get_repository(s, name)
            rows = s.execute(
                select(Version, Manifest).join(Manifest, Manifest.id == Version.manifest_id)
                .where(Version.repository_id == repo.id, Version.deleted_at.is_(None)).order_by(Version.id.desc())
            ).all()
        versions = [_version_info(v, m) for v, m in rows]
        tags = {v.version: v.digest for v in versions}
        if versions:
            tags[LATEST] = versions[0].digest
        return DeltaDetail(
            name=repo.name, namespace=repo.namespace, description=rows[0][1].description if rows else None,
            created_at=repo.created_at, updated_at=repo.updated_at,
            latest=versions[0].version if versions else None, versions=versions, tags=tags,
        )

    def version(self, name: str, reference: str, base_url: str) -> VersionDetail:
        """One version (by version, ``latest`` or digest), from its parsed manifest.json."""
        vm = self.manifests.version_manifest(name, reference)
        digest, m = vm.digest, vm.manifest
        version = None if reference.startswith("sha256:") else reference
        if version == LATEST:
            version = self.delta(name).latest
        s = m.summary()
        tensors = [
            TensorSummary(name=t.name, kind=t.kind, dtype=(t.post or t.base).dtype, shape=(t.post or t.base).shape,
                          stored_bytes=sum(c.size for st in (t.delta, t.values) if st for c in st.chunks)
                          + (t.patch.size if t.patch else 0))
            for t in m.tensors
        ]
        return VersionDetail(
            name=name, version=version, digest=digest, config_digest=vm.config_digest,
            format_version=m.format_version, created_at=m.created_at, description=m.description, license=m.license,
            base=m.base, post=m.post, base_shapes_key=base_architecture_key(m), codec=m.codec,
            tensors=s["tensors"], kinds=s["kinds"], post_parameters=s["post_parameters"], stored_bytes=s["stored_bytes"],
            bytes_per_parameter=s["bytes_per_parameter"], patched_elements=s["patched_elements"], files=m.files,
            tensor_list=tensors, commands=commands(base_url, name, version or digest, digest),
        )

    def compatible(self, *, base_id: str | None = None, fingerprint: str | None = None, shapes: str | None = None,
                   limit: int = 20, cursor: str | None = None, visible: set[str] | None = None) -> Page[CompatibleVersion]:
        """Live versions whose base is this model (fingerprint), has this id, or has the same tensor shapes."""
        tests = [(Manifest.base_fingerprint == fingerprint, "fingerprint") if fingerprint else None,
                 (func.lower(Manifest.base_id) == base_id.lower(), "id") if base_id else None,
                 (Manifest.base_architecture == shapes, "shapes") if shapes else None]
        tests = [t for t in tests if t is not None]
        if not tests:
            raise InvalidRequest("give at least one of base_id, fingerprint, shapes")
        match = case(*tests, else_="none").label("match")  # the strongest criterion that holds
        q = (select(Repository, Version, Manifest, match)
             .join(Version, Version.repository_id == Repository.id)
             .join(Manifest, Manifest.id == Version.manifest_id)
             .where(Version.deleted_at.is_(None), or_(*(cond for cond, _ in tests))))
        q = _visible(q, visible)
        rows, next_cursor = _page(self.db, q, (Version.id,), True, limit, cursor, lambda r: [r[1].id])
        return Page[CompatibleVersion](items=[
            CompatibleVersion(name=repo.name, version=v.name, digest=m.digest, match=kind, base_id=m.base_id,
                              base_fingerprint=m.base_fingerprint, post_id=m.post_id, published_at=v.created_at,
                              stored_bytes=m.stored_bytes)
            for repo, v, m, kind in rows
        ], next_cursor=next_cursor)

    def tags(self, name: str, n: int | None, last: str | None) -> tuple[list[str], bool]:
        """Tags in lexical order after ``last``, at most ``n``; and whether more follow."""
        with self.db.session() as s:
            repo = get_repository(s, name)
            names = list(s.scalars(select(Version.name).where(Version.repository_id == repo.id, Version.deleted_at.is_(None))))
        tags = sorted(names + [LATEST]) if names else []
        if last is not None:
            tags = [t for t in tags if t > last]
        if n is not None and len(tags) > n:
            return tags[:n], True
        return tags, False


def commands(base_url: str, name: str, reference: str, digest: str) -> Commands:
    """The exact pull and apply commands for a version, naming this registry."""
    sep = "@" if reference.startswith("sha256:") else ":"
    repo = f"{registry_prefix(base_url)}/{name}"
    folder = name.rsplit("/", 1)[-1] + ("" if sep == "@" else f"-{reference}")
    return Commands(pull=f"paramdelta pull {repo}{sep}{reference} --out {folder}.delta",
                    apply=f"paramdelta apply {repo}{sep}{reference} --base NEW_BASE --out {folder}-model",
                    pinned=f"{repo}@{digest}")


def encode_cursor(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, n: int) -> list[Any]:
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"cursor {cursor!r} is not one this registry issued") from None
    if not isinstance(values, list) or len(values) != n:
        raise InvalidRequest(f"cursor {cursor!r} does not fit this query")
    return values


def _page(db: Database, q: Select, columns: tuple, descending: bool, limit: int, cursor: str | None, key) -> tuple[list, str | None]:  # noqa: ANN001
    """Run ``q`` ordered by ``columns`` from ``cursor``; return one page and the next cursor."""
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"limit {limit}: between 1 and {MAX_LIMIT}")
    if cursor:
        values = decode_cursor(cursor, len(columns))
        left, right = (tuple_(*columns), tuple_(*values)) if len(columns) > 1 else (columns[0], values[0])
        q = q.where(left < right if descending else left > right)
    q = q.order_by(*(c.desc() if descending else c.asc() for c in columns)).limit(limit + 1)
    with db.session() as s:
        rows = [tuple(r) for r in s.execute(q).all()]
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (encode_cursor(key(rows[-1])) if more else None)


def _key_value(column: Any, row: tuple) -> Any:
    """The value of a sort column in a (Repository, Version, Manifest) row."""
    entity = {Repository: row[0], Version: row[1], Manifest: row[2]}[column.class_]
    return getattr(entity, column.key)


def _visible(q: Select, visible: set[str] | None) -> Select:
    return q if visible is None else q.where(Repository.namespace.in_(sorted(visible)) if visible else false())


def _summary(repo: Repository, v: Version, m: Manifest) -> DeltaSummary:
    return DeltaSummary(
        name=repo.name, namespace=repo.namespace, description=m.description, latest_version=v.name,
        latest_digest=m.digest, updated_at=repo.updated_at, base_id=m.base_id, base_revision=m.base_revision,
        base_fingerprint=m.base_fingerprint, model_type=m.model_type, post_id=m.post_id, codec=m.codec,
        stored_bytes=m.stored_bytes, post_parameters=m.post_parameters,
    )


def _version_info(v: Version, m: Manifest) -> VersionInfo:
    return VersionInfo(version=v.name, digest=m.digest, published_at=v.created_at, pushed_by=v.pushed_by,
                       stored_bytes=m.stored_bytes, base_id=m.base_id, base_fingerprint=m.base_fingerprint, post_id=m.post_id)
