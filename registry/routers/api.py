"""/api/v1: the native API. Search and list deltas, read one delta and its versions,
find the deltas that fit a base, and fetch a version's manifest.json alone so that
a client can pre-flight compatibility before downloading any blob."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from deltaformat.api_models import CompatibleVersion, DeltaSummary, Page
from deltaformat.manifest import MANIFEST_MEDIA_TYPE
from registry.auth import Principal, allow, allow_listing
from registry.catalog import MAX_CURSOR, MAX_LIMIT, MAX_QUERY, SearchQuery
from registry.http import ERROR_RESPONSES, next_link, public_url, registry
from registry.schemas import DeltaDetail, TensorSummary, VersionDetail
from registry.service import Registry

router = APIRouter(prefix="/api/v1", tags=["native API (/api/v1)"], responses=ERROR_RESPONSES)

Reg = Annotated[Registry, Depends(registry)]
Puller = Annotated[Principal, Depends(allow("pull"))]
Lister = Annotated[Principal, Depends(allow_listing)]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
Cursor = Annotated[str | None, Query(max_length=MAX_CURSOR, description="next_cursor of the previous page")]
Text = Annotated[str | None, Query(max_length=MAX_QUERY)]


@router.get("/deltas", summary="Search and list deltas")
def search_deltas(
    request: Request, response: Response, reg: Reg, principal: Lister,
    q: Annotated[str | None, Query(max_length=MAX_QUERY, description="free text: name, description, base and post model ids")] = None,
    base: Annotated[str | None, Query(max_length=MAX_QUERY, description="base model id, e.g. meta-llama/Llama-3.1-8B")] = None,
    architecture: Annotated[str | None, Query(max_length=MAX_QUERY, description="config.json model_type, e.g. llama")] = None,
    namespace: Text = None,
    sort: Literal["updated", "name", "size", "parameters"] = "updated",
    limit: Limit = 20,
    cursor: Cursor = None,
) -> Page[DeltaSummary]:
    query = SearchQuery(q, base, architecture, namespace, sort, limit, cursor)
    page = reg.catalog.search(query, reg.auth.visible_namespaces(principal))
    if page.next_cursor:
        response.headers.update(next_link(request.url.path, {**request.query_params, "cursor": page.next_cursor}))
    return page


@router.get("/compatible", summary="Versions that fit a base: by fingerprint, model id, or tensor shapes")
def compatible(
    request: Request, response: Response, reg: Reg, principal: Lister,
    base_id: Text = None,
    fingerprint: Annotated[str | None, Query(max_length=MAX_QUERY, description="the base's model fingerprint (exact base)")] = None,
    shapes: Annotated[str | None, Query(max_length=MAX_QUERY, description="architecture key: digest of tensor names and shapes")] = None,
    limit: Limit = 20,
    cursor: Cursor = None,
) -> Page[CompatibleVersion]:
    page = reg.catalog.compatible(base_id=base_id, fingerprint=fingerprint, shapes=shapes, limit=limit, cursor=cursor,
                                  visible=reg.auth.visible_namespaces(principal))
    if page.next_cursor:
        response.headers.update(next_link(request.url.path, {**request.query_params, "cursor": page.next_cursor}))
    return page


@router.get("/deltas/{name:path}/versions/{reference}/manifest", summary="A version's manifest.json, byte-exact (for pre-flight)",
            response_class=Response, responses={200: {"content": {MANIFEST_MEDIA_TYPE: {}}}})
async def version_manifest(name: str, reference: str, reg: Reg, _: Puller) -> Response:
    vm = await run_in_threadpool(reg.manifests.version_manifest, name, reference)
    return Response(vm.data, media_type=MANIFEST_MEDIA_TYPE,
                    headers={"Docker-Content-Digest": vm.config_digest, "X-Manifest-Digest": vm.digest})


@router.get("/deltas/{name:path}/versions/{reference}/tensors", summary="A version's tensors, a page at a time, in manifest order")
def version_tensors(name: str, reference: str, request: Request, response: Response, reg: Reg, _: Puller,
                    limit: Limit = MAX_LIMIT, cursor: Cursor = None) -> Page[TensorSummary]:
    page = reg.catalog.tensors(name, reference, limit, cursor)
    if page.next_cursor:
        response.headers.update(next_link(request.url.path, {**request.query_params, "cursor": page.next_cursor}))
    return page


@router.get("/deltas/{name:path}/versions/{reference}", summary="One version: its manifest summarised, with its first tensors")
def version_detail(name: str, reference: str, request: Request, reg: Reg, _: Puller) -> VersionDetail:
    return reg.catalog.version(name, reference, public_url(request))


@router.get("/deltas/{name:path}", summary="One delta with its versions and tags")
def delta_detail(name: str, reg: Reg, _: Puller) -> DeltaDetail:
    return reg.catalog.delta(name)
