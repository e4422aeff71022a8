"""A loopback HTTP reverse proxy that counts what it serves: which requests, how many bytes.

Tests put it between a client and a real registry to see what the client downloaded (a
blob request, or only manifest.json) without trusting the client's own account of it.
Responses are passed on as the registry sent them (status, headers, body), redirects
included.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

# Hop-by-hop headers (RFC 9110 §7.6.1) and the ones the proxy sets itself.
_NOT_FORWARDED = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
                  "host", "content-length", "content-encoding"}  # the body is passed on decoded


@dataclass(frozen=True)
class Served:
    method: str
    path: str
    status: int
    body_bytes: int


class CountingProxy:
    """``with CountingProxy(upstream_url) as proxy:`` then send requests to ``proxy.url``."""

    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.served: list[Served] = []
        self._lock = threading.Lock()
        self._http = httpx.Client(timeout=60.0, follow_redirects=False)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def __enter__(self) -> CountingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._http.close()

    def paths(self) -> list[str]:
        with self._lock:
            return [s.path for s in self.served]

    def body_bytes(self) -> int:
        with self._lock:
            return sum(s.body_bytes for s in self.served)

    def blob_requests(self) -> list[Served]:
        """Requests for OCI blobs (the layers, and a stock registry's config blob)."""
        with self._lock:
            return [s for s in self.served if "/blobs/" in s.path]

    def _record(self, served: Served) -> None:
        with self._lock:
            self.served.append(served)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _NOT_FORWARDED}
                resp = proxy._http.request(self.command, proxy.upstream + self.path, headers=headers, content=body)
                data = b"" if self.command == "HEAD" else resp.content
                # Recorded before the client can see the answer: a test reads ``served`` as soon as its call returns.
                proxy._record(Served(self.command, self.path, resp.status_code, len(data)))
                self.send_response(resp.status_code)
                for k, v in resp.headers.multi_items():
                    if k.lower() not in _NOT_FORWARDED:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(resp.content) if self.command != "HEAD" else
                                                       resp.headers.get("content-length", "0")))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

            def log_message(self, format: str, *args: object) -> None:  # the test reads ``served``, not stderr
                pass

        return Handler
