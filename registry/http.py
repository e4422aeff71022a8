"""HTTP plumbing shared by the routers: bounded body reads, Link headers, the service handle."""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import Request

from registry.errors import TooLarge
from registry.service import Registry


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


def next_link(path: str, params: dict[str, object]) -> dict[str, str]:
    """An RFC 8288 Link header for the next page (what OCI tags/list and the Hub use)."""
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return {"Link": f'<{path}?{query}>; rel="next"'}
