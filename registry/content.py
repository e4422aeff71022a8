"""OCI content the registry stores besides deltas: image manifests, image indexes and artifacts.

A manifest PUT is read here first. A paramdelta delta (config media type
application/vnd.paramdelta.manifest.v1+json, or the delta artifactType) goes on to the
delta rules in registry.publish; anything else is checked as distribution checks it:
valid JSON in the shape of its media type (OCI image manifest or index, or Docker's
schema 2 equivalents), digests of a supported algorithm, and a media type that agrees
with the request's Content-Type. Which blobs and manifests it references is what the
registry then checks exist and what garbage collection keeps.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from deltaformat.errors import invalid_field
from deltaformat.manifest import ARTIFACT_TYPE, MANIFEST_MEDIA_TYPE
from registry.blobs import DIGEST_RE
from registry.errors import ManifestInvalid, Unsupported

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MEDIA_TYPE_MAX = 255  # the manifests.media_type and artifact_type columns

DigestText = Annotated[str, StringConstraints(pattern=DIGEST_RE.pattern)]
MediaType = Annotated[str, StringConstraints(min_length=1, max_length=MEDIA_TYPE_MAX)]


class Descriptor(BaseModel):
    """An OCI content descriptor; unknown fields are kept (OCI allows extensions)."""

    model_config = ConfigDict(extra="allow")

    mediaType: MediaType
    digest: DigestText
    size: int = Field(ge=0)
    urls: list[str] | None = None
    annotations: dict[str, str] | None = None
    artifactType: MediaType | None = None


class ImageManifest(BaseModel):
    model_config = ConfigDict(extra="allow")

    schemaVersion: Literal[2]
    mediaType: Literal["application/vnd.oci.image.manifest.v1+json",
                       "application/vnd.docker.distribution.manifest.v2+json"] | None = None
    artifactType: MediaType | None = None
    config: Descriptor
    layers: list[Descriptor]
    subject: Descriptor | None = None
    annotations: dict[str, str] | None = None


class ImageIndex(BaseModel):
    model_config = ConfigDict(extra="allow")

    schemaVersion: Literal[2]
    mediaType: Literal["application/vnd.oci.image.index.v1+json",
                       "application/vnd.docker.distribution.manifest.list.v2+json"] | None = None
    artifactType: MediaType | None = None
    manifests: list[Descriptor]
    subject: Descriptor | None = None
    annotations: dict[str, str] | None = None


@dataclass
class Content:
    """What the registry needs to know of a manifest or index it stores."""

    media_type: str
    is_delta: bool
    artifact_type: str | None  # as the referrers API lists it
    subject: str | None  # the digest its subject names (a delta's: set by registry.publish from its full parse)
    config: str | None = None  # an image manifest's config blob
    blobs: list[Descriptor] = field(default_factory=list)  # config and layers that must be in the repository
    manifests: list[Descriptor] = field(default_factory=list)  # an index's manifests, which must be too


def read_content(data: bytes, content_type: str | None) -> Content:
    """Parse a pushed manifest or index; MANIFEST_INVALID (naming the field) when it is neither."""
    declared = (content_type or "").split(";")[0].strip().lower() or None
    if declared == "application/json":  # what a generic HTTP client sends: the document's mediaType decides
        declared = None
    if declared is not None and declared not in (*MANIFEST_TYPES, *INDEX_TYPES):
        raise Unsupported(f"manifest media type {content_type[:200]!r}; this registry stores "
                          f"{', '.join((*MANIFEST_TYPES, *INDEX_TYPES))}")
    doc = _json_object(data)
    inner = doc["mediaType"].lower() if isinstance(doc.get("mediaType"), str) else None
    if declared and inner and inner != declared:
        raise ManifestInvalid(f"manifest mediaType is {inner[:200]!r} but it was sent as Content-Type {declared!r}")
    media_type = declared or inner or (OCI_INDEX if "manifests" in doc else OCI_MANIFEST)
    if media_type in INDEX_TYPES:
        index = _validate(ImageIndex, doc, "OCI index")
        return Content(media_type, False, index.artifactType, index.subject.digest if index.subject else None,
                       manifests=list(index.manifests))
    if _claims_delta(doc):  # checked whole by deltaformat's own model next (registry.publish): parsed once here
        return Content(media_type, True, doc.get("artifactType") or MANIFEST_MEDIA_TYPE, None)
    manifest = _validate(ImageManifest, doc, "OCI manifest")
    local = [d for d in manifest.layers if not d.urls]  # layers with urls live elsewhere (non-distributable)
    return Content(media_type, False, manifest.artifactType or manifest.config.mediaType,
                   manifest.subject.digest if manifest.subject else None, config=manifest.config.digest,
                   blobs=[manifest.config, *local])


def _claims_delta(doc: dict) -> bool:
    """A paramdelta delta by its config media type or artifactType: then it must be one, whole."""
    config = doc.get("config")
    return doc.get("artifactType") == ARTIFACT_TYPE or (
        isinstance(config, dict) and config.get("mediaType") == MANIFEST_MEDIA_TYPE)


def _validate(model: type[BaseModel], doc: dict, what: str):  # noqa: ANN202 - the model's own type
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        raise ManifestInvalid(f"{what} {invalid_field(exc)}") from None


def _json_object(data: bytes) -> dict:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise ManifestInvalid("manifest is not valid JSON (or is nested too deeply)") from None
    if not isinstance(doc, dict):
        raise ManifestInvalid("manifest is not a JSON object")
    return doc
