"""Who the client says it is to a registry: the one place an Authorization header is chosen.

An ``httpx.Auth`` (so it applies to every request and httpx runs the challenge round trips):

* a bearer token given by the user (``--token``/PARAMDELTA_TOKEN) is sent as it is;
* a ``Basic`` challenge is answered with the user and password docker's config.json keeps for
  the registry's host[:port] (``paramdelta login``), or those given; after the first challenge
  every request carries them;
* a ``Bearer realm=..,service=..,scope=..`` challenge (the distribution token flow) is answered by
  GETting the realm with that service and scope, sending the stored basic credentials (or the
  user's token, to a realm on the registry's own origin), anonymously when there are none; the
  token it hands out is kept per repository and action and sent with later requests, and a 401
  to a kept token fetches a new one (tokens expire).

Nothing is ever sent to another origin than the registry's: httpx follows redirects and drops
the header on the way to another origin (a blob store); a challenge from such a target is not
answered. Basic credentials go to a realm elsewhere only over https, or when the registry
itself is plain http (loopback), as docker does.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Callable, Generator

import httpx

from deltaformat.errors import RegistryError

MAX_TOKEN_ANSWER = 1 << 20  # a token answer is a few KiB of JSON; more is not one
MAX_CHALLENGE_BODY = 64 << 10  # the OCI error envelope of a 401
CHALLENGE_PARAM = re.compile(r'([A-Za-z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')
SCOPED_PATH = re.compile(r"^/v2/(.+?)/(?:manifests|blobs|tags|referrers)/")

Origin = tuple[str, str, int | None]
ScopeKey = tuple[str, str]


def origin(url: httpx.URL) -> Origin:
    """(scheme, host, port) with the scheme's default port filled in: what "the same server" means."""
    return url.scheme, url.host, url.port or {"http": 80, "https": 443}.get(url.scheme)


def basic_header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def parse_challenge(header: str) -> tuple[str, dict[str, str]] | None:
    """(scheme in lowercase, parameters) of a WWW-Authenticate header; None when there is none."""
    scheme, _, rest = header.strip().partition(" ")
    if not scheme:
        return None
    params = {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3) for m in CHALLENGE_PARAM.finditer(rest)}
    return scheme.lower(), params


def scope_key(request: httpx.Request) -> ScopeKey:
    """What a request needs, as a token cache key: (repository or catalog, pull or push)."""
    path = request.url.path
    if path.startswith("/v2/_catalog"):
        return "registry:catalog", "*"
    found = SCOPED_PATH.match(path)
    if not found:
        return "", ""
    action = "pull" if request.method in ("GET", "HEAD") else "push"
    mount_from = request.url.params.get("from") if "mount" in request.url.params else None
    return f"repository:{found.group(1)}", action + (f"+from:{mount_from}" if mount_from else "")


class RegistryAuth(httpx.Auth):
    """Authorization for one registry (thread-safe: parallel transfers share it)."""

    def __init__(self, url: str, token: str | None = None, basic: tuple[str, str] | None = None):
        self.url = httpx.URL(url)
        self.origin = origin(self.url)
        self.host = self.url.netloc.decode()  # the key of docker config.json's auths
        self.token = token
        self._basic = basic_header(*basic) if basic else None
        self._basic_looked_up = basic is not None
        self._basic_error: RegistryError | None = None
        self._basic_challenged = False  # a Basic registry: send the credentials with every request from then on
        self._bearer: dict[ScopeKey, str] = {}
        self._lock = threading.Lock()
        self._fetching: dict[ScopeKey, threading.Lock] = {}
        self.last_challenge: tuple[str, dict[str, str]] | None = None
        # how token requests are sent (streamed): set by the transport to its client, without this auth
        self.fetch: Callable[[httpx.Request], httpx.Response] | None = None

    @property
    def has_credentials(self) -> bool:
        """Whether basic credentials were found (or given) for this registry."""
        return self._basic is not None

    # -- the flow httpx runs for every request ------------------------------------------

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if origin(request.url) != self.origin:
            yield request
            return
        key = scope_key(request)
        sent = self._header_for(key)
        if sent:
            request.headers["Authorization"] = sent
        response = yield request
        for round_ in range(2):
            if round_ == 1 and not self._invalid_token(response):
                return  # a second round only for a token the registry found invalid (expired), not for too little scope
            header = self._answer_to(response, request, key, sent)
            if header is None or header == sent:
                return
            request.headers["Authorization"] = sent = header
            response = yield request

    def _answer_to(self, response: httpx.Response, request: httpx.Request, key: ScopeKey, sent: str | None) -> str | None:
        """The Authorization header that answers a 401 challenge from the registry itself; None: none does."""
        if response.status_code != 401 or origin(response.url) != self.origin:
            return None
        if request.method != "HEAD" and _declared_length(response) > MAX_CHALLENGE_BODY:
            return None  # httpx reads a challenged answer whole before the retry: not one that says it is huge
        challenge = parse_challenge(response.headers.get("www-authenticate", ""))
        self.last_challenge = challenge
        if challenge is None:
            return None
        scheme, params = challenge
        if scheme == "basic":
            return self._basic_for_challenge()
        if scheme == "bearer":
            return self._bearer_for_challenge(key, params, sent)
        return None

    @staticmethod
    def _invalid_token(response: httpx.Response) -> bool:
        challenge = parse_challenge(response.headers.get("www-authenticate", ""))
        return response.status_code == 401 and challenge is not None and challenge[1].get("error") == "invalid_token"

    def _header_for(self, key: ScopeKey) -> str | None:
        with self._lock:
            token = self._bearer.get(key)
            if token is None and key[1] == "pull":  # a push token covers pulls of the same repository
                token = self._bearer.get((key[0], "push"))
            if token is not None:
                return f"Bearer {token}"
            if self.token:
                return f"Bearer {self.token}"
            return self._basic if self._basic_challenged else None

    # -- Basic --------------------------------------------------------------------------

    def _basic_for_challenge(self) -> str | None:
        header = self._stored_basic()
        with self._lock:
            self._basic_challenged = header is not None
        return header

    def _stored_basic(self) -> str | None:
        """The basic credentials for this host: given, or read once from docker's config.json."""
        with self._lock:  # parallel transfers: the file is read once
            if not self._basic_looked_up:
                from deltaformat.credentials import basic_credentials

                self._basic_looked_up = True
                try:
                    found = basic_credentials(self.host)
                except RegistryError as exc:  # kept: every parallel transfer then fails with this, not a bare 401
                    self._basic_error = exc
                    raise
                self._basic = basic_header(*found) if found else None
            if self._basic_error is not None:
                raise RegistryError(str(self._basic_error))
            return self._basic

    # -- Bearer -------------------------------------------------------------------------

    def _bearer_for_challenge(self, key: ScopeKey, params: dict[str, str], sent: str | None) -> str | None:
        realm = params.get("realm")
        if not realm:
            return None
        with self._lock:
            fetching = self._fetching.setdefault(key, threading.Lock())
        with fetching:  # one token request per scope, however many transfers were refused at once
            with self._lock:
                current = self._bearer.get(key)
            if current is not None and f"Bearer {current}" != sent:  # another thread just fetched it
                return f"Bearer {current}"
            token = self._fetch_token(realm, params)
            if token is None:
                return None
            with self._lock:
                self._bearer[key] = token
            return f"Bearer {token}"

    def _fetch_token(self, realm: str, params: dict[str, str]) -> str | None:
        """GET the realm for a token (None when it refuses): through ``fetch``, the transport's own
        client without this auth, so redirects and timeouts are the registry's."""
        try:
            url = httpx.URL(realm)
        except httpx.InvalidURL:
            raise RegistryError(f"{self.host}: its token realm {realm!r} is not a URL") from None
        if url.scheme not in ("http", "https"):
            raise RegistryError(f"{self.host}: its token realm {realm!r} is not an http(s) URL")
        query: list[tuple[str, str | int | float | bool | None]] = []
        if params.get("service"):
            query.append(("service", params["service"]))
        query += [("scope", s) for s in (params.get("scope") or "").split() if s]
        request = httpx.Request("GET", url.copy_merge_params(query))
        credential = self._credential_for_realm(url)
        if credential:
            request.headers["Authorization"] = credential
        if self.fetch is None:
            raise RuntimeError("RegistryAuth.fetch is not set: the transport sets it")
        response = self.fetch(request)
        try:
            if response.status_code != 200:
                return None
            return _token_from(response, self.host)
        finally:
            response.close()

    def _credential_for_realm(self, realm: httpx.URL) -> str | None:
        """What to show the token realm: the user's token to our own origin only; basic credentials
        where they would not travel in the clear when the registry itself is reached over https."""
        if origin(realm) == self.origin and self.token:
            return f"Bearer {self.token}"
        if realm.scheme == "https" or self.url.scheme == "http":
            return self._stored_basic()
        return None


def _declared_length(response: httpx.Response) -> int:
    try:
        return int(response.headers.get("content-length") or 0)
    except ValueError:
        return MAX_CHALLENGE_BODY + 1


def _token_from(response: httpx.Response, host: str) -> str | None:
    """The token of a realm's answer; None when it holds none (the registry's 401 then stands)."""
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) > MAX_TOKEN_ANSWER:
            raise RegistryError(f"{host}: the token realm answered more than {MAX_TOKEN_ANSWER:,} bytes; refused")
    try:
        answer = json.loads(bytes(body))
    except ValueError:
        raise RegistryError(f"{host}: the token realm's answer is not JSON") from None
    token = (answer.get("token") or answer.get("access_token")) if isinstance(answer, dict) else None
    if not isinstance(token, str) or not token or any(c in token for c in "\r\n"):
        return None
    return token
