"""Operations: readiness (/readyz), Prometheus metrics (/metrics) and structured logs.

    /healthz   the process answers (liveness)
    /readyz    the metadata database and the blob store answer (readiness: 200, else 503)
    /metrics   Prometheus text format, per replica (PARAMDELTA_METRICS=0 turns it off):
               paramdelta_http_requests_total{method,route,status}
               paramdelta_http_request_duration_seconds{method,route}   (until the last body byte)
               paramdelta_http_received_bytes_total / _sent_bytes_total{method,route}
               paramdelta_http_errors_total{method,route,status}        (5xx and unhandled errors)
               paramdelta_http_requests_in_progress, and the process collector's process_* series

``route`` is the route's template (``/v2/{name:path}/blobs/{digest}``), never the
raw path, so the series stay few. With PARAMDELTA_LOG_FORMAT=json every log line
is one JSON object, and each request is logged once (method, path, route, status,
duration, bytes, client) by this module instead of uvicorn's access log. Headers
are never logged, so neither are tokens.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import datetime, timezone
from typing import Any

from fastapi import FastAPI
from sqlalchemy import text

log = logging.getLogger("paramdelta.registry")
access_log = logging.getLogger("paramdelta.access")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


def install(app: FastAPI, settings: Any) -> _Metrics | None:
    """Add the middleware that counts requests (when metrics are on) and logs them (JSON logs); return the
    app's metrics, None when off (PARAMDELTA_METRICS=0, or prometheus-client is not installed)."""
    json_access = settings.log_format == "json"
    metrics = _Metrics.create() if settings.metrics else None
    if metrics is not None or json_access:
        app.add_middleware(_Observe, metrics=metrics, access=json_access)
    return metrics


def readiness(registry: Any) -> dict[str, str]:
    """Each backing service's answer: "ok", or the error that stopped it."""
    return {"database": _check(lambda: _ping_database(registry.db)), "storage": _check(registry.store.check)}


def _ping_database(db: Any) -> None:
    with db.engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def _check(fn: Callable[[], Any]) -> str:
    try:
        fn()
        return "ok"
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        log.warning("readiness check failed: %s: %s", type(exc).__name__, exc)
        return f"error: {type(exc).__name__}: {str(exc)[:200]}"


class _Metrics:
    """The series of one app, in a registry of its own (several apps may live in one process)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        labels = ("method", "route")
        self.requests = Counter("paramdelta_http_requests", "HTTP requests answered", (*labels, "status"), registry=self.registry)
        self.errors = Counter("paramdelta_http_errors", "HTTP requests answered with 5xx or failed", (*labels, "status"),
                              registry=self.registry)
        self.latency = Histogram("paramdelta_http_request_duration_seconds", "Time from request to the last response byte",
                                 labels, buckets=LATENCY_BUCKETS, registry=self.registry)
        self.received = Counter("paramdelta_http_received_bytes", "Request body bytes received", labels, registry=self.registry)
        self.sent = Counter("paramdelta_http_sent_bytes", "Response body bytes sent", labels, registry=self.registry)
        self.in_progress = Gauge("paramdelta_http_requests_in_progress", "HTTP requests being handled", registry=self.registry)

    def exposition(self) -> tuple[bytes, str]:
        """The series in Prometheus' text format, and its media type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    @classmethod
    def create(cls) -> _Metrics | None:
        try:
            return cls()
        except ImportError:
            log.warning("prometheus-client is not installed: /metrics is off (pip install 'paramdelta[scale]')")
            return None


class _Observe:
    """ASGI middleware: counts, times and sizes every HTTP request; logs it in JSON mode. Streams pass through."""

    def __init__(self, app: ASGIApp, metrics: _Metrics | None, access: bool):
        self.app, self.metrics, self.access = app, metrics, access

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status, received, sent = 500, 0, 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        async def counting_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        failed = False
        if self.metrics:
            self.metrics.in_progress.inc()
        try:
            await self.app(scope, counting_receive, counting_send)
        except BaseException:
            failed, status = True, 500
            raise
        finally:
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"]
            if self.metrics:
                m = self.metrics
                m.in_progress.dec()
                m.requests.labels(method, route, str(status)).inc()
                m.latency.labels(method, route).observe(elapsed)
                m.received.labels(method, route).inc(received)
                m.sent.labels(method, route).inc(sent)
                if status >= 500 or failed:
                    m.errors.labels(method, route, str(status)).inc()
            if self.access:
                client = scope.get("client")
                access_log.info("%s %s %d", method, scope["path"], status, extra={"http": {
                    "method": method, "path": scope["path"], "route": route, "status": status,
                    "duration_ms": round(elapsed * 1000, 2), "received_bytes": received, "sent_bytes": sent,
                    "client": f"{client[0]}:{client[1]}" if client else None}})


# -- logs ---------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str) -> str:
    """``text`` with control characters written as escapes (``\\n``, ``\\x1b``): a request's path or a pushed
    name in a log message cannot start a forged log line or drive the terminal that shows it."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), text)


class SafeLogRecord(logging.LogRecord):
    """Every log record of the process, escaped in this one place (installed by configure_logging): its message,
    and its string arguments too, which formatters such as uvicorn's access log read without the message."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if isinstance(self.args, tuple):
            self.args = tuple(escape_controls(a) if isinstance(a, str) else a for a in self.args)

    def getMessage(self) -> str:  # noqa: N802 - logging's name
        return escape_controls(super().getMessage())



class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and an ``http`` object for request logs."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage(),
        }
        http = getattr(record, "http", None)
        if http is not None:
            entry["http"] = http
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(settings: Any) -> dict[str, Any]:
    """Set up the root logger; returns the keyword arguments for ``uvicorn.run`` that go with it."""
    level = settings.log_level.upper()
    logging.setLogRecordFactory(SafeLogRecord)
    if settings.log_format != "json":
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return {}
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    return {"log_config": None, "access_log": False}  # this module logs each request instead
