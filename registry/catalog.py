"""Read-side queries for the native API and the pages: search, one delta, one version,
deltas for a base, tag lists. Lists use keyset (cursor) pagination: stable while
new versions are published, and as cheap on page 100 as on page 1."""

from __future__ import annotations

import base64
import binascii
import json
import shlex
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, case, false, func, or_, select, tuple_

from deltaformat.api_models import CompatibleVersion, DeltaSummary, Page
from deltaformat.oci import LATEST, registry_prefix
from registry.blobs import MAX_NAME, check_name
from registry.db import Database
from registry.db.models import Manifest, ManifestTensor, Repository, Version
from registry.db.queries import get_repository, latest_versions
from registry.errors import InvalidRequest
from registry.publish import Manifests
from registry.schemas import (
    Commands,
    DeltaDetail,
    TensorSummary,
    VersionDetail,
    VersionInfo,
)

MAX_LIMIT = 100
MAX_CURSOR = 1024  # characters: a cursor this registry issues holds at most two sort keys
MAX_QUERY = 255  # characters of a search filter: every column searched holds at most 255
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
        _check_lengths(q=query.text, base=query.base, architecture=query.architecture, namespace=query.namespace)
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
                .where(Version.repository_id == repo.id, Version.deleted_at.is_(None), Manifest.is_delta)
                .order_by(Version.id.desc())
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

    def version(self, name: str, reference: str, base_url: str, tensor_limit: int = MAX_LIMIT) -> VersionDetail:
        """One version (by version, ``latest`` or digest) from its summary stored at push, with the first
        ``tensor_limit`` tensors: a constant cost whatever the number of tensors (manifest.json is not read)."""
        vs = self.manifests.version_summary(name, reference)
        s = vs.summary
        tensors = self.tensors(name, reference, tensor_limit, None, manifest_id=vs.manifest_id)
        return VersionDetail(
            name=name, version=vs.version, digest=vs.digest, config_digest=vs.config_digest,
            format_version=s["format_version"], created_at=s["created_at"], description=s["description"],
            license=s["license"], base=s["base"], post=s["post"], base_shapes_key=s["base_shapes_key"], codec=s["codec"],
            tensors=vs.tensors, kinds=s["kinds"], post_parameters=vs.post_parameters, stored_bytes=vs.stored_bytes,
            bytes_per_parameter=s["bytes_per_parameter"], patched_elements=s["patched_elements"], files=s["files"],
            file_count=s["file_count"], tensor_list=tensors.items, tensor_list_next_cursor=tensors.next_cursor,
            commands=commands(base_url, name, vs.version or vs.digest, vs.digest),
        )

    def tensors(self, name: str, reference: str, limit: int, cursor: str | None, *,
                manifest_id: int | None = None) -> Page[TensorSummary]:
        """A version's tensors in manifest order, one page at a time (MoE models have 10^5)."""
        if manifest_id is None:
            manifest_id = self.manifests.version_summary(name, reference).manifest_id
        q = select(ManifestTensor).where(ManifestTensor.manifest_id == manifest_id)
        rows, next_cursor = _page(self.db, q, (ManifestTensor.position,), False, limit, cursor, lambda r: [r[0].position])
        return Page[TensorSummary](items=[
            TensorSummary(name=t.name, kind=t.kind, dtype=t.dtype, shape=json.loads(t.shape) if t.shape else None,
                          stored_bytes=t.stored_bytes)
            for (t,) in rows
        ], next_cursor=next_cursor)

    def compatible(self, *, base_id: str | None = None, fingerprint: str | None = None, shapes: str | None = None,
                   limit: int = 20, cursor: str | None = None, visible: set[str] | None = None) -> Page[CompatibleVersion]:
        """Live versions whose base is this model (fingerprint), has this id, or has the same tensor shapes."""
        _check_lengths(base_id=base_id, fingerprint=fingerprint, shapes=shapes)
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
             .where(Version.deleted_at.is_(None), Manifest.is_delta, or_(*(cond for cond, _ in tests))))
        q = _visible(q, visible)
        rows, next_cursor = _page(self.db, q, (Version.id,), True, limit, cursor, lambda r: [r[1].id])
        return Page[CompatibleVersion](items=[
            CompatibleVersion(name=repo.name, version=v.name, digest=m.digest, match=kind, base_id=m.base_id,
                              base_fingerprint=m.base_fingerprint, post_id=m.post_id, published_at=v.created_at,
                              stored_bytes=m.stored_bytes)
            for repo, v, m, kind in rows
        ], next_cursor=next_cursor)

    def tags(self, name: str, n: int | None, last: str | None) -> tuple[list[str], bool]:
        """Tags in lexical order after ``last``, at most ``n``; and whether more follow. ``latest`` is listed when
        the repository has a live delta version (it names the newest)."""
        check_name(name)
        if last is not None and len(last) > 128:  # the versions.name column; a longer one follows no tag anyway
            raise InvalidRequest(f"last has {len(last)} characters; a tag has at most 128")
        with self.db.session() as s:
            repo = get_repository(s, name)
            rows = s.execute(select(Version.name, Manifest.is_delta).join(Manifest, Manifest.id == Version.manifest_id)
                             .where(Version.repository_id == repo.id, Version.deleted_at.is_(None))).all()
        names = [tag for tag, _ in rows]
        tags = sorted(names + [LATEST]) if any(is_delta for _, is_delta in rows) and LATEST not in names else sorted(names)
        if last is not None:
            tags = [t for t in tags if t > last]
        if n is not None and len(tags) > n:
            return tags[:n], True
        return tags, False


def commands(base_url: str, name: str, reference: str, digest: str) -> Commands:
    """The exact pull and apply commands for a version, naming this registry. Every argument is shell-quoted:
    people paste these into a shell, and the registry's host comes from the request's Host header."""
    sep = "@" if reference.startswith("sha256:") else ":"
    repo = f"{registry_prefix(base_url)}/{name}"
    folder = name.rsplit("/", 1)[-1] + ("" if sep == "@" else f"-{reference}")
    ref, q = f"{repo}{sep}{reference}", shlex.quote
    return Commands(pull=f"paramdelta pull {q(ref)} --out {q(folder + '.delta')}",
                    apply=f"paramdelta apply {q(ref)} --base NEW_BASE --out {q(folder + '-model')}",
                    pinned=f"{repo}@{digest}")


def encode_cursor(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, columns: tuple[Any, ...]) -> list[Any]:
    """The sort key a cursor holds, each value of its column's type (anything else is a 400, never a database error)."""
    if len(cursor) > MAX_CURSOR:
        raise InvalidRequest(f"cursor has {len(cursor)} characters; this registry issues at most {MAX_CURSOR}")
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, RecursionError):
        raise InvalidRequest(f"cursor {cursor[:100]!r} is not one this registry issued") from None
    if not (isinstance(values, list) and len(values) == len(columns) and all(map(_fits, values, columns))):
        raise InvalidRequest(f"cursor {cursor[:100]!r} does not fit this query")
    return values


def _fits(value: Any, column: Any) -> bool:
    """Whether a cursor value can be compared with ``column``: an int in range, or a string the column could hold."""
    if column.type.python_type is int:
        return type(value) is int and -(1 << 63) <= value < (1 << 63)
    return isinstance(value, str) and len(value) <= MAX_NAME


def _check_lengths(**filters: str | None) -> None:
    for field, value in filters.items():
        if value is not None and len(value) > MAX_QUERY:
            raise InvalidRequest(f"{field} has {len(value)} characters; at most {MAX_QUERY}")


def _page(db: Database, q: Select, columns: tuple, descending: bool, limit: int, cursor: str | None, key) -> tuple[list, str | None]:  # noqa: ANN001
    """Run ``q`` ordered by ``columns`` from ``cursor``; return one page and the next cursor."""
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"limit {limit}: between 1 and {MAX_LIMIT}")
    if cursor:
        values = decode_cursor(cursor, columns)
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
