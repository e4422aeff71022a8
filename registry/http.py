"""HTTP plumbing shared by the routers: bounded body reads, Link headers, the service handle."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from fastapi import Request

from registry.errors import InvalidRequest, TooLarge
from registry.schemas import ErrorEnvelope
from registry.service import Registry

# The errors every route may answer, declared in the OpenAPI document so that it says what clients get.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorEnvelope, "description": what} for status, what in (
        (400, "invalid request: a name, reference, digest, parameter or body that breaks its grammar or limits"),
        (401, "a token is needed (or the one sent is unknown or revoked)"),
        (403, "the token's scope does not cover this"),
        (404, "no such repository, manifest or blob"),
        (500, "an internal error (the message names no internals)"),
    )
}


def registry(request: Request) -> Registry:
    """The process's Registry (a FastAPI dependency)."""
    return request.app.state.registry


def public_url(request: Request) -> str:
    return registry(request).public_url(str(request.base_url))


async def read_capped(request: Request, cap: int, what: str) -> bytes:
    """The whole body, refusing (413) more than ``cap`` bytes without reading them all."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > cap:
        raise TooLarge(f"{what} has {declared} bytes, over the limit of {cap}")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > cap:
            raise TooLarge(f"{what} is over the limit of {cap} bytes")
    return bytes(data)


def parse_json(data: bytes, what: str) -> Any:
    """A request body's JSON; INVALID_REQUEST for bad JSON, including nesting too deep for the parser."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise InvalidRequest(f"{what} is not valid JSON (or is nested too deeply)") from None


def next_link(path: str, params: dict[str, object]) -> dict[str, str]:
    """An RFC 8288 Link header for the next page (what OCI tags/list and the Hub use)."""
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return {"Link": f'<{path}?{query}>; rel="next"'}
