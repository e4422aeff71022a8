"""/v2: the OCI Distribution Specification v1.1.

Blobs (HEAD/GET with Range, DELETE), uploads (monolithic, chunked, resumable, mount),
manifests and indexes (byte-exact, by tag or digest, sha256 or sha512; PUT, DELETE),
tags/list, referrers, and distribution's _catalog. Each route translates HTTP to one
service call and back.

One extension, named with a leading underscore as OCI extensions are:
``POST /v2/<name>/blobs/_present`` with ``{"digests": [...]}`` answers
``{"blobs": {digest: size}}`` for those a HEAD would find, so that a push asks once
instead of once per blob (the client falls back to HEADs where it gets 404 or 405).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from deltaformat.oci import OCI_IMAGE_MANIFEST
from registry.auth import Principal, allow, allow_listing, signed_in
from registry.blobs import BlobRead, check_digest
from registry.content import OCI_INDEX
from registry.errors import InvalidRequest
from registry.http import ERROR_RESPONSES, next_link, parse_json, read_capped
from registry.listing import repositories
from registry.schemas import ErrorEnvelope
from registry.service import Registry
from registry.uploads import UploadStatus, body_length, range_headers

router = APIRouter(prefix="/v2", tags=["OCI distribution (/v2)"], responses=ERROR_RESPONSES)
API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}


async def _registry(request: Request) -> Registry:
    """The process's Registry. Async, unlike registry.http.registry: FastAPI runs a plain-def dependency in a
    worker thread, a hand-off that costs more than this lookup on every request."""
    return request.app.state.registry


Reg = Annotated[Registry, Depends(_registry)]
Puller = Annotated[Principal, Depends(allow("pull"))]
Pusher = Annotated[Principal, Depends(allow("push"))]
Deleter = Annotated[Principal, Depends(allow("delete"))]
# The same checks as functions, for the hot routes (a blob's HEAD/GET, a monolithic upload) that run them
# inside their own worker-thread call instead of a dependency's (one hand-off per request, not two).
_PULL, _PUSH = allow("pull"), allow("push")
PRESENT_MAX = 1000  # digests per _present request


@router.get("/", summary="API version check: 200 for a caller with a token (an anonymous pull token counts), "
                         "else 401 with the Bearer challenge that tells docker-style clients where to get one")
def version_check(_: Annotated[Principal, Depends(signed_in)]) -> JSONResponse:
    return JSONResponse({}, headers=API_VERSION)


@router.get("/_catalog", summary="List repositories, paginated with n and last (Link header)")
def catalog(reg: Reg, principal: Annotated[Principal, Depends(allow_listing)],
            n: Annotated[int | None, Query(ge=0)] = None, last: Annotated[str | None, Query()] = None) -> JSONResponse:
    names, more = repositories(reg.db, n, last, reg.auth.visible_namespaces(principal))
    headers = next_link("/v2/_catalog", {"n": n, "last": names[-1]}) if more and names else {}
    return JSONResponse({"repositories": names}, headers=headers)


# -- uploads (declared before /blobs/{digest} so that "uploads" is not read as a digest) --


@router.post("/{name:path}/blobs/uploads", status_code=202, include_in_schema=False)
@router.post("/{name:path}/blobs/uploads/", status_code=202, summary="Start an upload, upload a whole blob, or mount one")
async def start_upload(name: str, request: Request, reg: Reg,
                       digest: str | None = None, mount: str | None = None, from_: Annotated[str | None, Query(alias="from")] = None) -> Response:
    if digest and not (mount and from_):  # a whole blob: authorized in the worker-thread call that opens the upload
        await reg.uploads.monolithic(name, digest, request.stream(), before=lambda: _PUSH(request, name),
                                     declared=body_length(request.headers))
        return _blob_created(name, digest)
    principal = await run_in_threadpool(_PUSH, request, name)
    if mount and from_:
        reg.auth.authorize(principal, "pull", from_, str(request.base_url))
        if await run_in_threadpool(reg.blobs.mount, name, mount, from_):
            return _blob_created(name, mount)
    if digest:
        await reg.uploads.monolithic(name, digest, request.stream(), before=lambda: principal,
                                     declared=body_length(request.headers))
        return _blob_created(name, digest)
    return _upload_status(await run_in_threadpool(reg.uploads.start, name, principal.token_id), 202)


@router.patch("/{name:path}/blobs/uploads/{upload_id}", status_code=202, summary="Append a chunk")
async def append_chunk(name: str, upload_id: str, request: Request, reg: Reg, _: Pusher) -> Response:
    status = await reg.uploads.append(name, upload_id, request.stream(), request.headers.get("content-range"),
                                      body_length(request.headers))
    return _upload_status(status, 202)


@router.put("/{name:path}/blobs/uploads/{upload_id}", status_code=201, summary="Finish an upload: verify ?digest= and commit")
async def finish_upload(name: str, upload_id: str, digest: str, request: Request, reg: Reg, _: Pusher) -> Response:
    await reg.uploads.finish(name, upload_id, digest, request.stream(), request.headers.get("content-range"),
                             body_length(request.headers))
    return _blob_created(name, digest)


@router.get("/{name:path}/blobs/uploads/{upload_id}", status_code=204, summary="Where an upload stands (resume offset)")
def upload_status(name: str, upload_id: str, reg: Reg, _: Pusher) -> Response:
    return _upload_status(reg.uploads.status(name, upload_id), 204)


@router.delete("/{name:path}/blobs/uploads/{upload_id}", status_code=204, summary="Cancel an upload")
def cancel_upload(name: str, upload_id: str, reg: Reg, _: Pusher) -> Response:
    reg.uploads.cancel(name, upload_id)
    return Response(status_code=204)


# -- blobs ------------------------------------------------------------------------


@router.post("/{name:path}/blobs/_present", summary="Which of these blobs the repository has (extension: one request, not a HEAD per blob)")
async def blobs_present(name: str, request: Request, reg: Reg, _: Puller) -> JSONResponse:
    data = await read_capped(request, 80 * PRESENT_MAX + 1024, "digest list")
    try:
        digests = parse_json(data, "digest list")["digests"]
    except (InvalidRequest, KeyError, TypeError):
        raise InvalidRequest('expected a JSON body {"digests": ["sha256:...", ...]}') from None
    if not isinstance(digests, list) or not all(isinstance(d, str) for d in digests):
        raise InvalidRequest('"digests" must be a list of strings')
    if len(digests) > PRESENT_MAX:
        raise InvalidRequest(f"at most {PRESENT_MAX} digests per request; got {len(digests)}")
    return JSONResponse({"blobs": await run_in_threadpool(reg.blobs.present, name, digests)})


@router.get("/{name:path}/blobs/{digest}", summary="Get a blob (Range supported)")
@router.head("/{name:path}/blobs/{digest}", summary="Blob existence and size")
async def get_blob(name: str, digest: str, request: Request, reg: Reg) -> Response:
    def read() -> BlobRead:
        _PULL(request, name)
        return reg.blobs.read(name, digest, request.headers.get("range"), body=request.method == "GET")

    blob = await run_in_threadpool(read)
    headers = {"Docker-Content-Digest": blob.digest, "Accept-Ranges": "bytes", "Content-Length": str(blob.length)}
    if blob.redirect:
        # The digest and size travel on the redirect itself: the storage host may not send them.
        return RedirectResponse(blob.redirect, status_code=307, headers={"Docker-Content-Digest": blob.digest,
                                                                          "X-Blob-Size": str(blob.size)})
    if blob.partial:
        headers["Content-Range"] = f"bytes {blob.start}-{blob.end}/{blob.size}"
    status = 206 if blob.partial else 200
    if blob.chunks is None:
        return Response(status_code=status, headers=headers, media_type="application/octet-stream")
    return StreamingResponse(blob.chunks, status_code=status, headers=headers, media_type="application/octet-stream")


@router.delete("/{name:path}/blobs/{digest}", status_code=202, summary="Delete a blob from the repository")
def delete_blob(name: str, digest: str, reg: Reg, _: Deleter) -> Response:
    reg.blobs.delete(name, digest)
    return Response(status_code=202)


# -- manifests, tags and referrers --------------------------------------------------


@router.get("/{name:path}/manifests/{reference}", summary="Get a manifest by version or digest",
            responses={200: {"content": {OCI_IMAGE_MANIFEST: {}}, "description": "the manifest, byte-exact"}})
@router.head("/{name:path}/manifests/{reference}", summary="Manifest existence and digest")
def get_manifest(name: str, reference: str, request: Request, reg: Reg, _: Puller) -> Response:
    m = reg.manifests.get(name, reference)
    headers = {"Docker-Content-Digest": m.digest, "Content-Length": str(len(m.content))}
    return Response(m.content if request.method == "GET" else None, headers=headers, media_type=m.media_type)


@router.put("/{name:path}/manifests/{reference}", status_code=201,
            summary="Push a manifest or index (a delta version: validated, immutable)",
            responses={409: {"model": ErrorEnvelope, "description": "the version is published (or was) with other content"},
                       413: {"model": ErrorEnvelope, "description": "the manifest is over PARAMDELTA_MAX_MANIFEST_BYTES"}})
async def put_manifest(name: str, reference: str, request: Request, reg: Reg, principal: Pusher) -> Response:
    data = await read_capped(request, reg.settings.max_manifest_bytes, "manifest")
    published = await run_in_threadpool(reg.manifests.put, name, reference, request.headers.get("content-type"), data, principal)
    headers = {"Location": f"/v2/{name}/manifests/{published.digest}", "Docker-Content-Digest": published.digest}
    if published.subject:  # says this registry keeps the referrers list itself
        headers["OCI-Subject"] = published.subject
    return Response(status_code=201, headers=headers)


@router.delete("/{name:path}/manifests/{reference}", status_code=202, summary="Delete a manifest (by digest) or a version")
def delete_manifest(name: str, reference: str, reg: Reg, principal: Deleter) -> Response:
    reg.manifests.delete(name, reference, principal)
    return Response(status_code=202)


@router.get("/{name:path}/tags/list", summary="List tags (versions and latest), paginated with n and last")
def list_tags(name: str, reg: Reg, _: Puller, n: Annotated[int | None, Query(ge=0, le=1 << 31)] = None,
              last: Annotated[str | None, Query(max_length=128)] = None) -> JSONResponse:
    tags, more = reg.catalog.tags(name, n, last)
    headers = next_link(f"/v2/{name}/tags/list", {"n": n, "last": tags[-1]}) if more and tags else {}
    return JSONResponse({"name": name, "tags": tags}, headers=headers)


@router.get("/{name:path}/referrers/{digest}", summary="Manifests whose subject is this digest, as an OCI image index",
            responses={200: {"content": {OCI_INDEX: {}}, "description": "an image index of the referrers' descriptors"}})
def list_referrers(name: str, digest: str, reg: Reg, _: Puller,
                   artifact_type: Annotated[str | None, Query(alias="artifactType")] = None) -> Response:
    found = reg.referrers.list(name, digest, artifact_type)
    headers = {"OCI-Filters-Applied": "artifactType"} if found.filtered else {}
    return Response(found.index, media_type=OCI_INDEX, headers=headers)


def _blob_created(name: str, digest: str) -> Response:
    check_digest(digest)
    return Response(status_code=201, headers={"Location": f"/v2/{name}/blobs/{digest}", "Docker-Content-Digest": digest})


def _upload_status(status: UploadStatus, code: int) -> Response:
    return Response(status_code=code, headers={
        "Location": f"/v2/{status.name}/blobs/uploads/{status.id}", "Docker-Upload-UUID": status.id,
        **range_headers(status.size),
    })
