"""References that name a delta version in a registry: ``[REGISTRY/]NS/NAME[:TAG][@sha256:HEX]``,
and the registry URL a reference or a ``host[:port]`` means (HTTP for loopback only, as Docker does)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from deltaformat.manifest import DIGEST_PATTERN, NAME_PATTERN, VERSION_PATTERN

LATEST = "latest"

# The same grammars as the manifest's name, version and digests.
NAME_RE = re.compile(NAME_PATTERN)
TAG_RE = re.compile(VERSION_PATTERN)
DIGEST_RE = re.compile(DIGEST_PATTERN)


@dataclass(frozen=True)
class Reference:
    """``[REGISTRY/]NS/NAME[:TAG][@sha256:HEX]``; REGISTRY is a URL or a host[:port]."""

    name: str
    tag: str | None = None
    digest: str | None = None
    registry: str | None = None  # base URL, e.g. http://127.0.0.1:8000

    @property
    def reference(self) -> str:
        """What to ask the registry for: the digest when pinned, else the tag (default ``latest``)."""
        return self.digest or self.tag or LATEST

    def __str__(self) -> str:
        out = self.name + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")
        return f"{registry_prefix(self.registry)}/{out}" if self.registry else out


def parse_reference(ref: str) -> Reference:
    """Parse a registry reference; errors say which part is malformed."""
    text, registry = ref.strip(), None
    if "://" in text:
        scheme, _, rest = text.partition("://")
        host, _, text = rest.partition("/")
        registry = f"{scheme}://{host}"
    else:
        first, sep, rest = text.partition("/")
        if sep and ("." in first or ":" in first or first == "localhost"):
            registry, text = _url_for_host(first), rest
    name, _, digest = text.partition("@")
    tag = None
    if ":" in name:
        name, tag = name.rsplit(":", 1)
    if not NAME_RE.match(name):
        raise ValueError(f"{ref!r}: repository name {name!r} must be NS/NAME in lowercase letters, digits and . _ -")
    if tag is not None and not TAG_RE.match(tag):
        raise ValueError(f"{ref!r}: version {tag!r} must match [A-Za-z0-9_][A-Za-z0-9._-]{{0,127}}")
    if digest and not DIGEST_RE.match(digest):
        raise ValueError(f"{ref!r}: digest {digest!r} must be sha256:<64 lowercase hex>")
    return Reference(name, tag, digest or None, registry)


def is_reference(ref: str) -> bool:
    """True when ``ref`` parses as a registry reference."""
    try:
        parse_reference(ref)
    except ValueError:
        return False
    return True


def registry_url(location: str) -> str:
    """A registry's base URL from a URL or a bare host[:port] (HTTP for loopback only, as Docker does)."""
    return location.rstrip("/") if "://" in location else _url_for_host(location.strip("/"))


def _url_for_host(host: str) -> str:
    hostname = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
    loopback = hostname in ("localhost", "[::1]") or hostname.startswith("127.")
    return f"{'http' if loopback else 'https'}://{host}"


def registry_prefix(url: str) -> str:
    """The shortest prefix that parses back to ``url``: host[:port], or the URL when the scheme is not the default."""
    parts = urlsplit(url)
    return parts.netloc if _url_for_host(parts.netloc) == f"{parts.scheme}://{parts.netloc}" else url.rstrip("/")
