"""Bearer tokens with scopes, stored hashed, and the FastAPI dependencies that check them.

A token has one scope over one namespace (or "*"):

    pull   read repositories in the namespace
    push   read, push and delete there
    admin  everything, everywhere

Tokens are random (256 bits), so a plain sha256 is a sound way to store them; the
token itself is printed once by ``paramdelta token create`` and never logged (logs
name a token by its name and id). Anonymous pull is on unless
PARAMDELTA_ANONYMOUS_PULL=0; push and delete always need a token.

Docker-style clients (skopeo, podman, oras, regctl, the conformance suites) send
credentials only when ``GET /v2/`` asks for them, so it answers 401 with a Bearer
challenge to a caller without a token, even when pulls need none. Its realm,
``/auth/token``, trades basic credentials (the token as the password) for the token,
and, while anonymous pull is on, gives a caller without credentials the anonymous pull
token: it authenticates as anonymous, so it can pull (while anonymous pull is on)
and nothing else.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass

from fastapi import Request
from sqlalchemy import bindparam, select

from deltaformat.manifest import NAME_PATTERN
from registry.blobs import MAX_NAME, check_name
from registry.db import Database, utcnow
from registry.db.models import Token
from registry.errors import Denied, InvalidRequest, Unauthorized

SCOPES = ("pull", "push", "admin")
ACTIONS = ("pull", "push", "delete")
TOKEN_PREFIX = "pdt_"
# What /auth/token gives a caller without credentials while anonymous pull is on. Not a secret: it grants
# exactly what no token grants (anonymous pulls), and nothing once anonymous pull is switched off.
ANONYMOUS_TOKEN = "anonymous-pull"
# The first component of NAME_PATTERN: a namespace a repository name can have. A token for any other
# (``Meta``, ``a/b``) could never match a repository, so it is refused at creation, not silently useless.
NAMESPACE_RE = re.compile(NAME_PATTERN.split("(/", 1)[0] + "$")


@dataclass(frozen=True)
class Principal:
    """Who is asking: a token (by name and id, never its secret) or anonymous."""

    token_id: int | None = None
    name: str | None = None
    scope: str | None = None
    namespace: str | None = None
    anonymous_token: bool = False  # anonymous, but sent the anonymous pull token (it signed in, as docker clients do)

    @property
    def anonymous(self) -> bool:
        return self.token_id is None

    def can(self, action: str, namespace: str) -> bool:
        """Whether this principal's token allows ``action`` (pull, push, delete) in ``namespace``."""
        if self.scope == "admin":
            return True
        if self.scope is None or self.namespace not in ("*", namespace):
            return False
        return action == "pull" or self.scope == "push"

    def __str__(self) -> str:
        return "anonymous" if self.anonymous else f"token {self.name!r} (#{self.token_id}, {self.scope} on {self.namespace})"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(db: Database, namespace: str, scope: str, name: str | None = None) -> str:
    """Store a new token's hash and return the token (the only time it is seen)."""
    if scope not in SCOPES:
        raise ValueError(f"scope {scope!r}: choose one of {', '.join(SCOPES)}")
    if scope == "admin":
        namespace = "*"
    check_namespace(namespace)
    if name is not None and not 0 < len(name) <= MAX_NAME:
        raise ValueError(f"token name has {len(name)} characters; give 1 to {MAX_NAME}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with db.session() as s:
        s.add(Token(name=name or f"{scope}:{namespace}", token_hash=hash_token(token), scope=scope, namespace=namespace))
    return token


def check_namespace(namespace: str) -> str:
    """A namespace a token may act in: ``*`` or the first component of a repository name (lowercase)."""
    if namespace != "*" and not (len(namespace) <= MAX_NAME and NAMESPACE_RE.fullmatch(namespace)):
        raise ValueError(f"namespace {namespace[:300]!r} can never match a repository: use lowercase letters and digits, "
                         "runs joined by . _ - (the NS of NS/NAME), or * for every namespace")
    return namespace


def list_tokens(db: Database) -> list[Token]:
    with db.session() as s:
        return list(s.scalars(select(Token).order_by(Token.id)))


def revoke_token(db: Database, token_id: int) -> bool:
    """Revoke a token by id; False when there is no such live token."""
    with db.session() as s:
        tok = s.get(Token, token_id)
        if tok is None or tok.revoked_at is not None:
            return False
        tok.revoked_at = utcnow()
        return True


_BY_HASH = select(Token.id, Token.name, Token.scope, Token.namespace, Token.revoked_at).where(
    Token.token_hash == bindparam("token_hash"))


class Authenticator:
    """Turns an Authorization header into a Principal and checks it against an action."""

    def __init__(self, db: Database, *, anonymous_pull: bool, public_url: str | None):
        self.db = db
        self.anonymous_pull = anonymous_pull
        self.public_url = public_url

    def authenticate(self, authorization: str | None, base_url: str | None = None) -> Principal:
        """The principal for a header; a token that is unknown or revoked is 401, never anonymous."""
        token = credential(authorization)
        if token is None:
            return Principal()
        if token == ANONYMOUS_TOKEN:
            return Principal(anonymous_token=True)
        with self.db.engine.connect() as conn:  # a plain read, on every request: no ORM session (4x cheaper)
            row = conn.execute(_BY_HASH, {"token_hash": hash_token(token)}).first()
        if row is None or row.revoked_at is not None:
            raise Unauthorized("the token is unknown or revoked", headers=self._challenge(base_url, None))
        return Principal(row.id, row.name, row.scope, row.namespace)

    def authorize(self, principal: Principal, action: str, name: str | None, base_url: str) -> None:
        """401 when a token is needed and none was given; 403 when the token's scope does not cover this."""
        namespace = name.split("/", 1)[0] if name else None
        if action == "pull" and self.anonymous_pull:
            return
        if principal.anonymous:
            what = f"{action} on {name}" if name else action
            raise Unauthorized(f"authentication required: {what} needs a bearer token",
                               headers=self._challenge(base_url, name, action))
        if namespace is None:  # registry-wide reads (search): any valid token may list
            if action == "pull":
                return
            if principal.scope != "admin":
                raise Denied(f"{principal} may not {action} registry-wide; an admin token is needed")
            return
        if not principal.can(action, namespace):
            raise Denied(f"{principal} may not {action} in namespace {namespace!r}")

    def visible_namespaces(self, principal: Principal) -> set[str] | None:
        """Namespaces whose deltas this principal may list; None means all."""
        if self.anonymous_pull or principal.scope == "admin" or principal.namespace == "*":
            return None
        return set() if principal.anonymous else {principal.namespace}

    def require_signed_in(self, principal: Principal, base_url: str) -> None:
        """401 with the Bearer challenge for a caller that sent no token at all (``GET /v2/``)."""
        if principal.anonymous and not (principal.anonymous_token and self.anonymous_pull):
            raise Unauthorized("authentication required: get a token from the realm in WWW-Authenticate "
                               "(an anonymous pull token when anonymous pull is on)", headers=self._challenge(base_url, None))

    def issue(self, authorization: str | None, base_url: str) -> str:
        """What the token endpoint answers: the caller's own token, traded for its Basic or Bearer credentials;
        without credentials, the anonymous pull token while anonymous pull is on, else 401."""
        token = credential(authorization)
        if token is not None and not self.authenticate(authorization, base_url).anonymous:  # 401 when unknown or revoked
            return token
        if self.anonymous_pull and (not authorization or token == ANONYMOUS_TOKEN):  # credentials without a token: 401
            return ANONYMOUS_TOKEN
        raise Unauthorized("send a registry token as the password (Basic) or as a Bearer token",
                           headers={"WWW-Authenticate": 'Basic realm="paramdelta"'})

    def _challenge(self, base_url: str | None, name: str | None, action: str = "pull") -> dict[str, str]:
        base = (self.public_url or base_url or "").rstrip("/")
        scope = f',scope="repository:{name}:{"pull,push" if action != "pull" else "pull"}"' if name else ""
        return {"WWW-Authenticate": f'Bearer realm="{base}/auth/token",service="paramdelta"{scope}'}


def credential(authorization: str | None) -> str | None:
    """The token in ``Bearer T`` or ``Basic base64(user:T)`` (what docker-style clients send)."""
    if not authorization:
        return None
    kind, _, value = authorization.partition(" ")
    if kind.lower() == "bearer" and value.strip():
        return value.strip()
    if kind.lower() == "basic":
        try:
            return base64.b64decode(value).decode().partition(":")[2] or None
        except (ValueError, UnicodeDecodeError):
            raise InvalidRequest("malformed Basic authorization header") from None
    raise Unauthorized(f"unsupported authorization scheme {kind!r}; send 'Bearer <token>'")


# -- FastAPI dependencies ------------------------------------------------------------


def current_principal(request: Request) -> Principal:
    """The caller, authenticated once per request."""
    return request.app.state.registry.auth.authenticate(request.headers.get("authorization"), str(request.base_url))


def allow(action: str):
    """A dependency that authorizes ``action`` on the ``name`` path parameter and returns the principal."""
    if action not in ACTIONS:
        raise ValueError(action)

    def dependency(request: Request, name: str) -> Principal:
        check_name(name)
        auth: Authenticator = request.app.state.registry.auth
        principal = current_principal(request)
        auth.authorize(principal, action, name, str(request.base_url))
        return principal

    return dependency


def signed_in(request: Request) -> Principal:
    """A dependency for ``GET /v2/``: any token, the anonymous pull token included; 401 with a challenge otherwise."""
    principal = current_principal(request)
    request.app.state.registry.auth.require_signed_in(principal, str(request.base_url))
    return principal


def allow_listing(request: Request) -> Principal:
    """A dependency for registry-wide reads (search, lists)."""
    auth: Authenticator = request.app.state.registry.auth
    principal = current_principal(request)
    auth.authorize(principal, "pull", None, str(request.base_url))
    return principal
