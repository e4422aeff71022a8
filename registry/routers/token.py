"""/auth/token: the token endpoint docker-style clients are sent to by a Bearer challenge."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from registry.http import registry
from registry.service import Registry

Reg = Annotated[Registry, Depends(registry)]
TOKEN_LIFETIME_SECONDS = 3600

router = APIRouter(tags=["auth"])


@router.get("/auth/token", summary="Token endpoint for docker-style clients: trades a valid token for itself; "
            "without credentials, an anonymous pull token while anonymous pull is on")
def token(request: Request, reg: Reg) -> JSONResponse:
    value = reg.auth.issue(request.headers.get("authorization"), str(request.base_url))
    return JSONResponse({"token": value, "access_token": value, "expires_in": TOKEN_LIFETIME_SECONDS})
