"""A small, real token server for distribution's ``auth: token`` (the Docker token authentication spec).

It runs on a loopback port in the test's process and signs JWTs (RS256) with a fresh key whose
self-signed certificate the registry trusts (its ``rootcertbundle``); each token carries the
certificate in its ``x5c`` header, as distribution verifies it. Users log in with HTTP basic;
anonymous callers get pull access only (when ``anonymous_pull``); the catalog is for users.
Every request is recorded, so a test can count what the client asked for.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import http.server
import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

ISSUER = "paramdelta-test-issuer"
SERVICE = "paramdelta-test-registry"
TOKEN_SECONDS = 300


def parse_scope(scope: str) -> tuple[str, str, list[str]]:
    """(type, name, actions) of one ``type:name:action,action`` token scope. distribution 2.8 lists a
    challenge's actions in Go map order, so compare them as a set."""
    kind, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    return kind, name, [a for a in actions.split(",") if a]


@dataclass
class TokenRequest:
    """What one GET /token asked for: the user (None: anonymous), the scopes, and whether it was granted."""

    user: str | None
    scopes: list[str]
    status: int


@dataclass
class TokenServer:
    """A running token server: ``realm`` to configure the registry with, ``requests`` as they came."""

    realm: str
    cert_path: Path
    users: dict[str, str]
    anonymous_pull: bool = True
    expire_first: bool = False  # the first token handed out is already expired: the client must fetch another
    requests: list[TokenRequest] = field(default_factory=list)
    _key: rsa.RSAPrivateKey | None = None
    _cert_der: bytes = b""

    def grant(self, user: str | None, scope: str) -> dict[str, object] | None:
        """The access entry a token gets for one requested scope (None: nothing of it)."""
        kind, name, wanted = parse_scope(scope)
        if kind == "registry" and name == "catalog":
            allowed = wanted if user else []
        elif kind == "repository":
            allowed = wanted if user else [a for a in wanted if a == "pull" and self.anonymous_pull]
        else:
            allowed = []
        return {"type": kind, "name": name, "actions": allowed} if allowed else None

    def issue(self, user: str | None, scopes: list[str]) -> str:
        now = int(time.time())
        expired = self.expire_first and not any(r.status == 200 for r in self.requests)
        claims = {
            "iss": ISSUER, "sub": user or "", "aud": SERVICE, "jti": secrets.token_hex(8),
            "iat": now - 7200 if expired else now, "nbf": now - 7200 if expired else now - 5,
            "exp": now - 3600 if expired else now + TOKEN_SECONDS,
            "access": [g for g in (self.grant(user, s) for s in scopes) if g is not None],
        }
        assert self._key is not None
        return jwt.encode(claims, self._key, algorithm="RS256",
                          headers={"x5c": [base64.b64encode(self._cert_der).decode()]})


def _self_signed(folder: Path) -> tuple[rsa.RSAPrivateKey, bytes, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "paramdelta test token issuer")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    path = folder / "token-issuer.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert.public_bytes(serialization.Encoding.DER), path


class _Handler(http.server.BaseHTTPRequestHandler):
    server_state: TokenServer

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        state = self.server_state
        query = parse_qs(urlsplit(self.path).query)
        scopes = [s for value in query.get("scope", []) for s in value.split()]
        user, ok = self._user(state)
        if not ok or query.get("service") != [SERVICE]:
            state.requests.append(TokenRequest(user, scopes, 401))
            self._answer(401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials or service"}]})
            return
        token = state.issue(user, scopes)
        state.requests.append(TokenRequest(user, scopes, 200))
        self._answer(200, {"token": token, "access_token": token, "expires_in": TOKEN_SECONDS})

    def _user(self, state: TokenServer) -> tuple[str | None, bool]:
        header = self.headers.get("Authorization")
        if not header:
            return None, True
        kind, _, value = header.partition(" ")
        if kind.lower() != "basic":
            return None, False
        user, _, password = base64.b64decode(value).decode().partition(":")
        return user, state.users.get(user) == password

    def _answer(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def token_server(folder: Path, users: dict[str, str], *, anonymous_pull: bool = True,
                 expire_first: bool = False) -> Iterator[TokenServer]:
    """Run a token server on a loopback port until the block ends."""
    folder.mkdir(parents=True, exist_ok=True)
    key, der, cert_path = _self_signed(folder)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    state = TokenServer(f"http://127.0.0.1:{httpd.server_address[1]}/token", cert_path, users, anonymous_pull,
                        expire_first, _key=key, _cert_der=der)
    httpd.RequestHandlerClass = type("Handler", (_Handler,), {"server_state": state})
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
