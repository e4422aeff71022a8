"""``GET /v2/_catalog``: the repositories of this registry, in lexical order, ``n`` at a time after ``last``
(distribution's catalog API; a ``Link`` header names the next page). Only the namespaces the caller may
pull from are listed."""

from __future__ import annotations

from sqlalchemy import false, select

from registry.blobs import MAX_NAME
from registry.db import Database
from registry.db.models import Repository
from registry.errors import InvalidRequest

DEFAULT_PAGE = 100  # repositories per page when ``n`` is not given (distribution's default)
MAX_PAGE = 1000


def repositories(db: Database, n: int | None, last: str | None, visible: set[str] | None) -> tuple[list[str], bool]:
    """Repository names after ``last``, at most ``n``; and whether more follow. ``visible``: the namespaces the
    caller may list (None: all)."""
    n = DEFAULT_PAGE if n is None else n
    if not 0 <= n <= MAX_PAGE:
        raise InvalidRequest(f"n {n}: between 0 and {MAX_PAGE}")
    if last is not None and len(last) > MAX_NAME:
        raise InvalidRequest(f"last has {len(last)} characters; a repository name has at most {MAX_NAME}")
    q = select(Repository.name).order_by(Repository.name).limit(n + 1)
    if last is not None:
        q = q.where(Repository.name > last)
    if visible is not None:
        q = q.where(Repository.namespace.in_(sorted(visible)) if visible else false())
    with db.session() as s:
        names = list(s.scalars(q))
    return names[:n], len(names) > n
