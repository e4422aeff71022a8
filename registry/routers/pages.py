"""Server-rendered pages for people: a searchable list at /, and one page per delta
with its versions, models, sizes, tensors and the exact commands to pull and apply."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from deltaformat.signing import BUNDLE_MEDIA_TYPE, signatures_listed
from registry.auth import Principal, allow, allow_listing
from registry.catalog import SearchQuery
from registry.http import public_url, registry
from registry.service import Registry

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).resolve().parent.parent / "templates")
templates.env.filters["size"] = lambda n: _human(n, 1024, ("B", "KiB", "MiB", "GiB", "TiB"))
templates.env.filters["count"] = lambda n: _human(n, 1000, ("", "K", "M", "B", "T"))

Reg = Annotated[Registry, Depends(registry)]
PAGE_SIZE = 25
TENSORS_SHOWN = 50  # per page: the tensor list is paginated (MoE models have 10^5 tensors)


@router.get("/", response_class=HTMLResponse)
def index(request: Request, reg: Reg, principal: Annotated[Principal, Depends(allow_listing)],
          q: str | None = None, base: str | None = None, cursor: str | None = None) -> HTMLResponse:
    page = reg.catalog.search(SearchQuery(text=q or None, base=base or None, limit=PAGE_SIZE, cursor=cursor),
                              reg.auth.visible_namespaces(principal))
    return templates.TemplateResponse(request, "index.html", {"page": page, "q": q or "", "base": base or "",
                                                              "registry": public_url(request)})


@router.get("/deltas/{name:path}", response_class=HTMLResponse)
def delta(request: Request, name: str, reg: Reg, _: Annotated[Principal, Depends(allow("pull"))],
          version: str | None = None, tensors: str | None = None) -> HTMLResponse:
    detail = reg.catalog.delta(name)
    shown = version or detail.latest
    v = reg.catalog.version(name, shown, public_url(request), tensor_limit=1) if shown else None
    page = reg.catalog.tensors(name, shown, TENSORS_SHOWN, tensors) if shown else None
    # the signatures among the version's referrers, as their referrer manifests name them (checked by the client, not here)
    signatures = signatures_listed(json.loads(reg.referrers.list(name, v.digest, BUNDLE_MEDIA_TYPE).index)["manifests"]) if v else []
    return templates.TemplateResponse(request, "delta.html", {"d": detail, "v": v, "tensor_page": page, "shown": shown,
                                                              "signatures": signatures})


def render_error(request: Request, status: int, message: str) -> HTMLResponse:
    """An error as a page, for people (the API answers the OCI envelope instead)."""
    return templates.TemplateResponse(request, "error.html", {"status": status, "message": message}, status_code=status)


def _human(n: float | None, step: int, units: tuple[str, ...]) -> str:
    if n is None:
        return "-"
    for unit in units:
        if abs(n) < step or unit == units[-1]:
            return f"{n:.0f} {unit}".strip() if unit == units[0] else f"{n:.1f} {unit}"
        n /= step
    return str(n)
