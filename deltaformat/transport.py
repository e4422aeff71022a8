"""How the client talks HTTP to a registry: one httpx.Client, one retry policy, errors with fields.

* ``Transport.send``: one request; redirects followed by httpx (at most MAX_REDIRECTS), which drops
  the Authorization header on the way to another origin; authorization is deltaformat.auth's.
* ``RetryPolicy.run``: the one retry policy every request goes through, streamed or not:
  connection errors, 5xx and 429, with exponential backoff and jitter, honouring Retry-After.
* ``Transport.check``: an answer that is not one of the expected statuses raises
  ``RetryableAnswer`` (5xx, 429) or ``RegistryResponseError`` with the status, the OCI error code
  and the registry's message, plus a hint when a 401 says what to do (log in, pass a token).
"""

from __future__ import annotations

import functools
import json
import logging
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import httpx

from deltaformat._version import __version__
from deltaformat.auth import RegistryAuth
from deltaformat.errors import FormatError, RegistryError, RegistryResponseError
from deltaformat.manifest import MAX_MANIFEST_BYTES

log = logging.getLogger("paramdelta.client")
T = TypeVar("T")

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_REDIRECTS = 5
MAX_RETRY_AFTER = 60.0  # seconds: a longer Retry-After is capped, not obeyed blindly
MAX_ERROR_BODY = 64 << 10  # an error answer is read this far for its message, no further
TIMEOUT = httpx.Timeout(connect=10.0, read=120.0, write=120.0, pool=300.0)


class RetryableAnswer(Exception):
    """A retryable answer (5xx, 429, a cut transfer), with the server's Retry-After in seconds when it gave one."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class RetryPolicy:
    """Retry connection errors and RetryableAnswer ``retries`` times, with backoff (or Retry-After)."""

    retries: int = 6
    backoff: float = 0.5
    max_delay: float = 10.0
    sleep: Callable[[float], None] = field(default=time.sleep)

    def run(self, what: str, attempt: Callable[[], T]) -> T:
        """Run ``attempt`` until it succeeds; give up with a RegistryError naming ``what``."""
        for n in range(self.retries + 1):
            try:
                return attempt()
            except RetryableAnswer as exc:
                problem, wait = str(exc), exc.retry_after
            except httpx.TransportError as exc:
                problem, wait = f"{what}: {type(exc).__name__}: {exc}", None
            if n == self.retries:
                raise RegistryError(f"{problem} (gave up after {n + 1} attempts)")
            log.info("%s; retrying in %.1fs", problem, delay := self.delay(n, wait))
            self.sleep(delay)
        raise AssertionError("unreachable")

    def delay(self, n: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, MAX_RETRY_AFTER)
        # exponential backoff with jitter, so parallel transfers do not retry in step
        return float(min(self.max_delay, self.backoff * 2 ** n)) * random.uniform(0.5, 1.0)


@functools.cache
def ssl_context() -> ssl.SSLContext:
    """One verified TLS context per process: building one loads the CA bundle (~45 ms a client)."""
    return httpx.create_ssl_context()


class Transport:
    """HTTP to one registry (thread-safe: transfers share it from a thread pool)."""

    def __init__(self, url: str, auth: RegistryAuth, retry: RetryPolicy, *, timeout: httpx.Timeout = TIMEOUT,
                 transport: httpx.BaseTransport | None = None, connections: int = 12):
        self.url = url.rstrip("/")
        self.host = httpx.URL(self.url).netloc.decode()
        self.auth, self.retry = auth, retry
        self.http = httpx.Client(timeout=timeout, transport=transport, auth=auth, follow_redirects=True,
                                 max_redirects=MAX_REDIRECTS, verify=ssl_context(),
                                 limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
                                 headers={"User-Agent": f"paramdelta/{__version__}"})
        auth.fetch = lambda request: self.http.send(request, auth=None, stream=True)

    def close(self) -> None:
        self.http.close()

    def absolute(self, path_or_url: str) -> httpx.URL:
        return httpx.URL(self.url + path_or_url if path_or_url.startswith("/") else path_or_url)

    def send(self, method: str, path_or_url: str, *, stream: bool = False, **kw: Any) -> httpx.Response:
        """One request (a path on the registry, or an absolute URL it gave), redirects followed."""
        request = self.http.build_request(method, self.absolute(path_or_url), **kw)
        try:
            return self.http.send(request, stream=stream)
        except httpx.TooManyRedirects:
            raise RegistryError(f"{method} {path_or_url}: more than {MAX_REDIRECTS} redirects") from None

    def call(self, what: str, method: str, path: str, ok: tuple[int, ...] = (200,), **kw: Any) -> httpx.Response:
        """A whole (non-streamed) request with retries; an error answer raises RegistryError."""
        return self.retry.run(what, lambda: self.check(self.send(method, path, **kw), what, ok))

    def check(self, resp: httpx.Response, what: str, ok: tuple[int, ...]) -> httpx.Response:
        """``resp`` when its status is in ``ok``; else closed, and raised as RetryableAnswer or an error."""
        if resp.status_code in ok:
            return resp
        body = _read_some(resp, MAX_ERROR_BODY)
        resp.close()
        if resp.status_code in RETRY_STATUSES:
            raise RetryableAnswer(f"{what}: HTTP {resp.status_code}", retry_after(resp))
        raise self.error(resp, body, what)

    def error(self, resp: httpx.Response, body: bytes, what: str) -> RegistryResponseError:
        """The OCI error envelope's first error (or the HTTP status) as a RegistryResponseError."""
        code, message = _oci_error(body)
        if code is None:
            code, message = f"HTTP {resp.status_code}", body[:200].decode(errors="replace") or resp.reason_phrase
        hint = self._unauthorized_hint() if resp.status_code == 401 else ""
        return RegistryResponseError(f"{what}: {code}: {message}{hint}", status=resp.status_code, code=code, detail=message)

    def _unauthorized_hint(self) -> str:
        if self.auth.token:
            return " (the token was refused)"
        if self.auth.has_credentials:
            return f" (the credentials for {self.host} were refused; run `paramdelta login {self.host}`)"
        challenge = self.auth.last_challenge
        if challenge and (challenge[0] == "basic" or (challenge[0] == "bearer" and challenge[1].get("service") != "paramdelta")):
            return f" ({self.host} needs a login: run `paramdelta login {self.host}`)"
        return " (pass --token or set PARAMDELTA_TOKEN)"

    def get_small(self, what: str, path: str, headers: dict[str, str] | None = None) -> tuple[bytes, httpx.Headers]:
        """GET a manifest's bytes, refusing more than MAX_MANIFEST_BYTES before holding them
        (a registry that is not ours could send a body without end)."""
        def attempt() -> tuple[bytes, httpx.Headers]:
            resp = self.send("GET", path, stream=True, headers=headers)
            try:
                self.check(resp, what, (200,))
                body = _read_some(resp, MAX_MANIFEST_BYTES + 1)
                if len(body) > MAX_MANIFEST_BYTES:
                    raise FormatError(f"{what} from {self.url}: more than {MAX_MANIFEST_BYTES:,} bytes; refused")
                return body, resp.headers
            finally:
                resp.close()

        return self.retry.run(what, attempt)


def _read_some(resp: httpx.Response, limit: int) -> bytes:
    """Up to ``limit`` bytes of a (possibly streamed) body; the rest is left unread."""
    if resp.is_stream_consumed:  # a whole (not streamed) request: already read
        return resp.content[:limit]
    body = bytearray()
    for chunk in resp.iter_bytes():
        body += chunk
        if len(body) >= limit:
            break
    return bytes(body[:limit])


def _oci_error(body: bytes) -> tuple[str | None, str]:
    try:
        first = json.loads(body)["errors"][0]
        return str(first["code"]), str(first["message"])
    except (ValueError, KeyError, IndexError, TypeError):
        return None, ""


def retry_after(resp: httpx.Response) -> float | None:
    """Retry-After as seconds (it may be a number or an HTTP date)."""
    value = resp.headers.get("retry-after")
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
