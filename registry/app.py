"""The registry application: ``create_app(settings)`` and ``serve(settings)``.

Errors raised by the services are rendered here, once: the OCI error envelope for
/v2 and /api, an HTML page for people.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import re
import typing
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from deltaformat._version import __version__
from registry import metrics
from registry.auth import Principal, allow_listing
from registry.errors import ClientGone, RegistryError, from_storage
from registry.routers import api, health, oci, pages, token
from registry.service import Registry
from registry.settings import Settings
from registry.storage.errors import StorageError

log = logging.getLogger("paramdelta.registry")
_MACHINE_PREFIXES = ("/v2", "/api", "/auth", "/healthz", "/readyz", "/metrics")
# Pages load their style and script from /static, so no inline code runs: injected markup cannot script.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY")]
SWAGGER_CDN = "https://cdn.jsdelivr.net"  # where FastAPI's Swagger UI page loads its script and style from
Lister = Annotated[Principal, Depends(allow_listing)]


def create_app(settings: Settings | None = None) -> FastAPI:
    """A registry app over the database and blob store ``settings`` name (opened now, migrated if needed)."""
    settings = settings or Settings()
    reg = Registry.open(settings)
    reg.uploads.purge_expired()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        reg.close()

    app = FastAPI(title="paramdelta registry", version=__version__, lifespan=lifespan,
                  description="Publish, find and pull ParamΔ delta artifacts. OCI Distribution under /v2, native API under /api/v1.",
                  docs_url=None, redoc_url=None, openapi_url=None)  # served below, under the same rule as pulls
    app.state.registry = reg
    app.state.metrics = metrics.install(app, settings)  # request counts and logs; None when metrics are off
    routers = [oci.router, api.router, pages.router, health.router, token.router]
    for router in routers + ([health.metrics_router] if app.state.metrics else []):
        _declare_raw_responses(router.routes)
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=Path(__file__).resolve().parent / "static"), name="static")
    _add_docs(app)
    _add_error_handlers(app)
    app.add_middleware(_SecurityHeaders)
    return app


def serve(settings: Settings) -> None:
    """Run the registry with uvicorn until interrupted."""
    import uvicorn

    uvicorn_logging = metrics.configure_logging(settings)  # text, or JSON with PARAMDELTA_LOG_FORMAT=json
    app = create_app(settings)
    log.info("paramdelta registry %s: data %s, database %s, blobs %s", __version__, settings.data,
             _redact(settings.resolved_database_url()), settings.resolved_blob_store())
    log.info("browse http://%s:%d/  (API docs at /docs)", settings.host, settings.port)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
                timeout_keep_alive=30, server_header=False, **uvicorn_logging)


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _add_docs(app: FastAPI) -> None:
    """/openapi.json and /docs, which need a token when pulls do (they describe what the registry serves)."""
    generate = app.openapi

    def honest_openapi() -> dict[str, Any]:
        # FastAPI documents 422 for invalid parameters; this registry answers those 400 with the OCI envelope.
        if app.openapi_schema is None:
            document = generate()
            for operations in document.get("paths", {}).values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
            for unused in ("HTTPValidationError", "ValidationError"):
                document.get("components", {}).get("schemas", {}).pop(unused, None)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = honest_openapi  # type: ignore[method-assign]

    @app.get("/openapi.json", include_in_schema=False)
    def openapi(_: Lister) -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    def docs(_: Lister) -> HTMLResponse:
        page = get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} API")
        page.headers["content-security-policy"] = _docs_csp(page.body.decode())
        return page


def _declare_raw_responses(routes: list) -> None:
    """Routes that answer a Response they build (an empty 201/202, a blob, a manifest) say so in the OpenAPI
    document, instead of FastAPI's default claim of a JSON body; their errors stay declared as JSON."""
    for route in routes:
        returns = typing.get_type_hints(route.endpoint).get("return") if isinstance(route, APIRoute) else None
        raw = isinstance(returns, type) and issubclass(returns, Response) and not issubclass(returns, JSONResponse)
        if raw and route.response_model is None:
            route.response_class = Response


def _docs_csp(html: str) -> str:
    """The Swagger UI page's policy: its CDN, and its one inline script allowed by hash, not 'unsafe-inline'."""
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(code.encode()).digest()).decode()}'"
                      for code in re.findall(r"<script>(.*?)</script>", html, re.S))
    return (f"default-src 'self'; script-src 'self' {SWAGGER_CDN} {hashes}; style-src 'self' {SWAGGER_CDN}; "
            "img-src 'self' data: https://fastapi.tiangolo.com; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


class _SecurityHeaders:
    """ASGI middleware: every response gets nosniff, no-referrer and a strict CSP (unless the route set its own).
    Plain ASGI rather than BaseHTTPMiddleware, so that blob streams pass through untouched."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in SECURITY_HEADERS if k not in names]
                if b"content-security-policy" not in names:
                    headers.append((b"content-security-policy", CSP.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


def _add_error_handlers(app: FastAPI) -> None:
    def for_people(request: Request) -> bool:
        return not request.url.path.startswith(_MACHINE_PREFIXES) and "text/html" in request.headers.get("accept", "")

    @app.exception_handler(RegistryError)
    async def registry_error(request: Request, exc: RegistryError) -> Response:
        if for_people(request):
            return pages.render_error(request, exc.status, exc.message)
        return JSONResponse(exc.envelope(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StorageError)
    async def storage_error(request: Request, exc: StorageError) -> Response:
        # The services let the blob driver's errors through; this is where they become OCI errors.
        error = from_storage(exc)
        if error.status >= 500:
            log.error("%s %s: blob store: %s", request.method, request.url.path, exc, exc_info=exc)
        return await registry_error(request, error)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return JSONResponse({"errors": [{"code": "INVALID_REQUEST", "message": f"{where}: {first['msg']}", "detail": None}]},
                            status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        code = {404: "NOT_FOUND", 405: "UNSUPPORTED"}.get(exc.status_code, "UNSUPPORTED")
        if for_people(request):
            return pages.render_error(request, exc.status_code, str(exc.detail))
        return JSONResponse({"errors": [{"code": code, "message": str(exc.detail), "detail": None}]},
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, exc: ClientGone) -> Response:
        log.info("%s %s: client went away mid-body; %s", request.method, request.url.path,
                 "the bytes received are dropped (a monolithic upload)" if request.method == "POST" else
                 "the bytes received are kept (the upload resumes from them)")
        return Response(status_code=400)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        # The envelope names no internals (no traceback, no exception text): the log has them.
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse({"errors": [{"code": "UNKNOWN", "message": "internal error; the registry's log has the details",
                                         "detail": None}]}, status_code=500)
