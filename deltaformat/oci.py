"""Delta artifacts as OCI artifacts, and the references that name them in a registry.

Shared by the client (which builds what it pushes and checks what it pulls) and the
registry (which validates what is pushed), so both sides apply one set of rules.

A published delta version is an OCI image manifest (schemaVersion 2)::

    artifactType  application/vnd.paramdelta.delta.v1
    config        the artifact's manifest.json, byte for byte (application/vnd.paramdelta.manifest.v1+json)
    layers        every blob manifest.json references, once each, in manifest order,
                  typed by role: chunk (delta/values streams), patch, or carried file

    annotations   base id and fingerprint, post id, format version, name and version (delta_annotations):
                  what a plain OCI client can tell about the delta without reading its config

The repository name is the delta's ``NS/NAME`` and the tag its version. References
(``[REGISTRY/]NS/NAME[:TAG]``) are parsed in deltaformat.reference, re-exported here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deltaformat.digests import blob_digest
from deltaformat.errors import FormatError, invalid_field
from deltaformat.manifest import ARTIFACT_TYPE, MANIFEST_MEDIA_TYPE, Digest, Manifest
from deltaformat.reference import (  # re-exported: references were parsed here before deltaformat.reference
    DIGEST_RE,
    LATEST,
    NAME_RE,
    TAG_RE,
    Reference,
    is_reference,
    parse_reference,
    registry_prefix,
    registry_url,
)

OCI_IMAGE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CHUNK_MEDIA_TYPE = "application/vnd.paramdelta.chunk.v1"
PATCH_MEDIA_TYPE = "application/vnd.paramdelta.patch.v1"
FILE_MEDIA_TYPE = "application/vnd.paramdelta.file.v1"
TENSOR_ANNOTATION = "vnd.paramdelta.tensor"
TITLE_ANNOTATION = "org.opencontainers.image.title"
FORMAT_VERSION_ANNOTATION = "vnd.paramdelta.format.version"
BASE_ID_ANNOTATION = "vnd.paramdelta.base.id"
BASE_FINGERPRINT_ANNOTATION = "vnd.paramdelta.base.fingerprint"
POST_ID_ANNOTATION = "vnd.paramdelta.post.id"
NAME_ANNOTATION = "vnd.paramdelta.name"
VERSION_ANNOTATION = "org.opencontainers.image.version"
DESCRIPTION_ANNOTATION = "org.opencontainers.image.description"
CREATED_ANNOTATION = "org.opencontainers.image.created"


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


def delta_annotations(manifest: Manifest) -> dict[str, str]:
    """What a plain OCI client (oras, regctl, skopeo inspect) can read about a delta without its config:
    which base it applies to, what it turns that base into, and the format version. All taken from
    manifest.json, so the same artifact always gets the same annotations (and the same digest)."""
    annotations = {
        CREATED_ANNOTATION: manifest.created_at.isoformat(),
        BASE_ID_ANNOTATION: manifest.base.id,
        BASE_FINGERPRINT_ANNOTATION: manifest.base.fingerprint,
        POST_ID_ANNOTATION: manifest.post.id,
        FORMAT_VERSION_ANNOTATION: str(manifest.format_version),
    }
    if manifest.description:
        annotations[DESCRIPTION_ANNOTATION] = manifest.description[:1000]
    if manifest.name:
        annotations[NAME_ANNOTATION] = manifest.name
    if manifest.version:
        annotations[VERSION_ANNOTATION] = manifest.version
    return annotations


def build_oci_manifest(manifest: Manifest, manifest_bytes: bytes) -> bytes:
    """The OCI manifest for an artifact, serialised deterministically (same artifact, same digest)."""
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_IMAGE_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": MANIFEST_MEDIA_TYPE, "digest": sha256_digest(manifest_bytes), "size": len(manifest_bytes)},
        "layers": [d.model_dump(exclude_none=True) for d in layer_descriptors(manifest)],
        "annotations": delta_annotations(manifest),
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def parse_oci_manifest(data: bytes) -> OciManifest:
    """Parse OCI manifest bytes; a delta version must carry a paramdelta manifest.json as its config."""
    try:
        oci = OciManifest.model_validate_json(data)
    except ValidationError as exc:
        raise FormatError(f"OCI manifest {invalid_field(exc)}") from None
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


__all__ = [
    "OCI_IMAGE_MANIFEST", "CHUNK_MEDIA_TYPE", "PATCH_MEDIA_TYPE", "FILE_MEDIA_TYPE", "LATEST", "NAME_RE", "TAG_RE", "DIGEST_RE",
    "Descriptor", "OciManifest", "layer_descriptors", "delta_annotations", "build_oci_manifest", "parse_oci_manifest",
    "check_layers", "architecture_key", "base_architecture_key", "sha256_digest",
    "Reference", "parse_reference", "is_reference", "registry_url", "registry_prefix",
]
