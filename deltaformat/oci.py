"""Delta artifacts as OCI artifacts, and the references that name them in a registry.

Shared by the client (which builds what it pushes and checks what it pulls) and the
registry (which validates what is pushed), so both sides apply one set of rules.

A published delta version is an OCI image manifest (schemaVersion 2)::

    artifactType  application/vnd.paramdelta.delta.v1
    config        the artifact's manifest.json, byte for byte (application/vnd.paramdelta.manifest.v1+json)
    layers        every blob manifest.json references, once each, in manifest order,
                  typed by role: chunk (delta/values streams), patch, or carried file

The repository name is the delta's ``NS/NAME`` and the tag its version.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deltaformat.digests import blob_digest
from deltaformat.errors import FormatError
from deltaformat.manifest import (
    ARTIFACT_TYPE, DIGEST_PATTERN, MANIFEST_MEDIA_TYPE, NAME_PATTERN, VERSION_PATTERN, Digest, Manifest,
)

OCI_IMAGE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CHUNK_MEDIA_TYPE = "application/vnd.paramdelta.chunk.v1"
PATCH_MEDIA_TYPE = "application/vnd.paramdelta.patch.v1"
FILE_MEDIA_TYPE = "application/vnd.paramdelta.file.v1"
TENSOR_ANNOTATION = "vnd.paramdelta.tensor"
TITLE_ANNOTATION = "org.opencontainers.image.title"
LATEST = "latest"

# The same grammars as the manifest's name, version and digests.
NAME_RE = re.compile(NAME_PATTERN)
TAG_RE = re.compile(VERSION_PATTERN)
DIGEST_RE = re.compile(DIGEST_PATTERN)


class Descriptor(BaseModel):
    """An OCI content descriptor (unknown fields kept: OCI allows extensions)."""

    model_config = ConfigDict(extra="allow")

    mediaType: str
    digest: Digest
    size: int = Field(ge=0)
    annotations: dict[str, str] | None = None
    artifactType: str | None = None


class OciManifest(BaseModel):
    """The subset of an OCI image manifest that a delta version uses."""

    model_config = ConfigDict(extra="allow")

    schemaVersion: Literal[2]
    mediaType: Literal["application/vnd.oci.image.manifest.v1+json"] | None = None
    artifactType: str | None = None
    config: Descriptor
    layers: list[Descriptor]
    subject: Descriptor | None = None
    annotations: dict[str, str] | None = None


def layer_descriptors(manifest: Manifest) -> list[Descriptor]:
    """One layer per blob of ``manifest``, in ``Manifest.blob_digests()`` order, typed by role."""
    roles: dict[str, tuple[str, dict[str, str]]] = {}
    for t in manifest.tensors:
        for s in (t.delta, t.values):
            for c in (s.chunks if s is not None else []):
                roles.setdefault(c.digest, (CHUNK_MEDIA_TYPE, {TENSOR_ANNOTATION: t.name}))
        if t.patch is not None:
            roles.setdefault(t.patch.digest, (PATCH_MEDIA_TYPE, {TENSOR_ANNOTATION: t.name}))
    for f in manifest.files:
        roles.setdefault(f.digest, (FILE_MEDIA_TYPE, {TITLE_ANNOTATION: f.path}))
    sizes = manifest.blob_sizes()
    return [
        Descriptor(mediaType=roles[d][0], digest=d, size=sizes[d], annotations=roles[d][1])
        for d in manifest.blob_digests()
    ]


def build_oci_manifest(manifest: Manifest, manifest_bytes: bytes) -> bytes:
    """The OCI manifest for an artifact, serialised deterministically (same artifact, same digest)."""
    annotations = {"org.opencontainers.image.created": manifest.created_at.isoformat()}
    if manifest.description:
        annotations["org.opencontainers.image.description"] = manifest.description[:1000]
    annotations["vnd.paramdelta.base.id"] = manifest.base.id
    annotations["vnd.paramdelta.base.fingerprint"] = manifest.base.fingerprint
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_IMAGE_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": MANIFEST_MEDIA_TYPE, "digest": sha256_digest(manifest_bytes), "size": len(manifest_bytes)},
        "layers": [d.model_dump(exclude_none=True) for d in layer_descriptors(manifest)],
        "annotations": annotations,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def parse_oci_manifest(data: bytes) -> OciManifest:
    """Parse OCI manifest bytes; a delta version must carry a paramdelta manifest.json as its config."""
    try:
        oci = OciManifest.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(document)"
        raise FormatError(f"OCI manifest field {where}: {first['msg']}") from None
    if oci.config.mediaType != MANIFEST_MEDIA_TYPE:
        raise FormatError(
            f"OCI manifest config.mediaType is {oci.config.mediaType!r}; a paramdelta delta has {MANIFEST_MEDIA_TYPE!r}"
        )
    if oci.artifactType not in (None, ARTIFACT_TYPE):
        raise FormatError(f"OCI manifest artifactType is {oci.artifactType!r}; expected {ARTIFACT_TYPE!r}")
    return oci


def check_layers(oci: OciManifest, manifest: Manifest) -> None:
    """Fail unless the layers are exactly the blobs ``manifest`` references, with the same sizes."""
    sizes = manifest.blob_sizes()
    seen: set[str] = set()
    for layer in oci.layers:
        if layer.digest in seen:
            raise FormatError(f"layer {layer.digest} is listed twice")
        seen.add(layer.digest)
        if layer.digest not in sizes:
            raise FormatError(f"layer {layer.digest} is not referenced by manifest.json")
        if layer.size != sizes[layer.digest]:
            raise FormatError(f"layer {layer.digest} has size {layer.size}, manifest.json says {sizes[layer.digest]}")
    missing = [d for d in sizes if d not in seen]
    if missing:
        raise FormatError(f"manifest.json references blob {missing[0]} which is not a layer ({len(missing)} missing)")


def architecture_key(tensors: Iterable[tuple[str, Iterable[int]]]) -> str:
    """A digest of (tensor name, shape) pairs: two models with the same key fit the same deltas.

    sha256 over one JSON line ``["name",[shape]]`` per tensor, sorted by name. dtypes are
    left out on purpose: apply's pre-flight reports a dtype difference by name.
    """
    h = hashlib.sha256()
    for name, shape in sorted((n, list(s)) for n, s in tensors):
        h.update(json.dumps([name, shape], separators=(",", ":")).encode() + b"\n")
    return "sha256:" + h.hexdigest()


def base_architecture_key(manifest: Manifest) -> str:
    """The architecture key of the base a delta was extracted against."""
    return architecture_key((t.name, t.base.shape) for t in manifest.tensors if t.base is not None)


sha256_digest = blob_digest  # the name the client and the registry know; deltaformat.digests defines it


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
