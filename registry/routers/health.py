"""Operations endpoints: /healthz (liveness), /readyz (readiness), /metrics (Prometheus).

What they measure lives in ``registry.metrics``; these routes only answer.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from deltaformat._version import __version__
from registry.auth import allow_listing
from registry.http import registry
from registry.metrics import readiness
from registry.schemas import Health
from registry.service import Registry

Reg = Annotated[Registry, Depends(registry)]

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> Health:
    return Health(version=__version__)


@router.get("/readyz", summary="Readiness: the database and the blob store answer")
def readyz(reg: Reg) -> JSONResponse:
    checks = readiness(reg)
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ready" if ok else "unavailable", **checks}, status_code=200 if ok else 503)


# Included only while metrics are on (PARAMDELTA_METRICS and prometheus-client installed): otherwise /metrics is a 404.
# Under the pull rule: with anonymous pull off, a scraper sends a token (Prometheus: authorization.credentials).
metrics_router = APIRouter(tags=["health"])


@metrics_router.get("/metrics", summary="Prometheus metrics of this replica", include_in_schema=False,
                    dependencies=[Depends(allow_listing)])
def prometheus(request: Request) -> Response:
    body, media_type = request.app.state.metrics.exposition()
    return Response(body, media_type=media_type)
