"""Deltas in a registry without paramdelta's search API (a stock OCI registry), listed from what
the OCI distribution API offers: ``/v2/_catalog``, each repository's tags, and the annotations
of one manifest per repository (``latest`` when tagged, else the last tag).

Bounded, since a registry may hold many repositories: the catalog is read a page at a time,
at most MAX_MANIFESTS manifests are fetched per call, and the page's ``notice`` says in one
line how the listing was made and where it stopped; ``next_cursor`` (the last repository
looked at) continues it. Repositories whose manifest is not a paramdelta delta are left out.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from deltaformat.api_models import CatalogPage, TaggedDelta
from deltaformat.errors import FormatError, RegistryError, RegistryResponseError
from deltaformat.manifest import ARTIFACT_TYPE, MANIFEST_MEDIA_TYPE
from deltaformat.oci import (
    BASE_FINGERPRINT_ANNOTATION,
    BASE_ID_ANNOTATION,
    CREATED_ANNOTATION,
    DESCRIPTION_ANNOTATION,
    FORMAT_VERSION_ANNOTATION,
    POST_ID_ANNOTATION,
    OciManifest,
)
from deltaformat.reference import LATEST, NAME_RE, TAG_RE, registry_prefix
from deltaformat.registry_client import RegistryClient

CATALOG_PAGE = 100  # repositories asked for per /v2/_catalog request
MAX_MANIFESTS = 50  # manifests fetched per search call, at most
MAX_TAGS_PAGE = 1000
SORTS = ("updated", "name", "size")


def list_deltas(client: RegistryClient, *, text: str | None = None, base: str | None = None,
                architecture: str | None = None, namespace: str | None = None, sort: str = "updated",
                limit: int = 20, cursor: str | None = None) -> CatalogPage:
    """One page of the deltas a stock registry holds, filtered as /api/v1/deltas filters."""
    where = registry_prefix(client.url)
    if architecture:
        raise ValueError(f"search --architecture: {where} has no paramdelta search API and its annotations do not "
                         "carry the architecture; search by text or --base instead")
    if sort not in SORTS:
        raise ValueError(f"search --sort {sort}: {where} has no paramdelta search API; sort by one of {', '.join(SORTS)}")
    limit = max(1, min(limit, 100))
    items: list[TaggedDelta] = []
    fetched, last, more = 0, cursor, True
    while more and len(items) < limit and fetched < MAX_MANIFESTS:
        names, more = _catalog_page(client, last)
        for name in names:
            if len(items) >= limit or fetched >= MAX_MANIFESTS:
                more = True
                break
            last = name
            if namespace and not name.startswith(f"{namespace}/"):
                continue
            found, asked = _describe(client, name)
            fetched += asked
            if found is not None and _matches(found, text, base):
                items.append(found)
    items.sort(key=_sort_key(sort))
    stop = f"; stopped after {fetched} manifests, --cursor {last} goes on" if more else ""
    notice = (f"{where} has no paramdelta search API: listed from /v2/_catalog, tags and manifest annotations "
              f"({len(items)} found{stop})")
    return CatalogPage(items=items, next_cursor=last if more else None, notice=notice)


def _catalog_page(client: RegistryClient, last: str | None) -> tuple[list[str], bool]:
    """(repository names, whether the catalog goes on) after ``last``."""
    params: dict[str, Any] = {"n": CATALOG_PAGE, "last": last}
    try:
        answer = client.get_json("catalog", "/v2/_catalog", params)
    except RegistryResponseError as exc:
        if exc.status in (404, 405):
            raise RegistryError(f"search: {registry_prefix(client.url)} has neither the paramdelta search API nor "
                                f"a catalog (/v2/_catalog answered HTTP {exc.status}); pull by name instead") from None
        raise
    repositories = answer.get("repositories") if isinstance(answer, dict) else None
    if not isinstance(repositories, list):
        raise RegistryError(f"search: {registry_prefix(client.url)}/v2/_catalog answered without a repositories list")
    names = [n for n in repositories if isinstance(n, str) and NAME_RE.match(n)]
    return names, len(repositories) >= CATALOG_PAGE


def _describe(client: RegistryClient, name: str) -> tuple[TaggedDelta | None, int]:
    """The delta repository ``name`` holds (None when it is something else), and how many manifests that took."""
    tag = _listed_tag(client, name)
    if tag is None:
        return None, 0
    try:
        digest, content = client.resolve(name, tag)
        oci = OciManifest.model_validate_json(content)
    except (FormatError, ValueError, RegistryResponseError):
        return None, 1  # not an OCI image manifest (an index, a docker v2 schema...), or gone meanwhile
    notes = oci.annotations or {}
    if (oci.config.mediaType != MANIFEST_MEDIA_TYPE or oci.artifactType not in (None, ARTIFACT_TYPE)
            or BASE_ID_ANNOTATION not in notes or BASE_FINGERPRINT_ANNOTATION not in notes):
        return None, 1
    return TaggedDelta(
        name=name, namespace=name.split("/", 1)[0], latest_version=tag, latest_digest=digest,
        description=notes.get(DESCRIPTION_ANNOTATION), updated_at=_when(notes.get(CREATED_ANNOTATION)),
        base_id=notes[BASE_ID_ANNOTATION], base_fingerprint=notes[BASE_FINGERPRINT_ANNOTATION],
        post_id=notes.get(POST_ID_ANNOTATION), format_version=notes.get(FORMAT_VERSION_ANNOTATION),
        stored_bytes=oci.config.size + sum(layer.size for layer in oci.layers),
    ), 1


def _listed_tag(client: RegistryClient, name: str) -> str | None:
    """``latest`` when the repository has it, else its last tag (distribution lists them sorted)."""
    try:
        answer = client.get_json(f"tags of {name}", f"/v2/{name}/tags/list", {"n": MAX_TAGS_PAGE})
    except RegistryResponseError:
        return None
    tags = [t for t in (answer.get("tags") or []) if isinstance(t, str) and TAG_RE.match(t)] if isinstance(answer, dict) else []
    if not tags:
        return None
    return LATEST if LATEST in tags else sorted(tags)[-1]


def _matches(item: TaggedDelta, text: str | None, base: str | None) -> bool:
    if base and item.base_id.lower() != base.lower():
        return False
    if text:
        haystack = " ".join(filter(None, (item.name, item.description, item.base_id, item.post_id))).lower()
        return all(word in haystack for word in text.lower().split())
    return True


def _when(value: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if value else None
    except ValueError:
        return None


def _sort_key(sort: str) -> Any:
    if sort == "name":
        return lambda i: i.name
    if sort == "size":
        return lambda i: -i.stored_bytes
    return lambda i: -(i.updated_at.timestamp() if i.updated_at else 0.0)
