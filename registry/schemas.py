"""Response models of the native API (/api/v1). Model and tensor descriptions reuse
deltaformat.manifest's models, the single source of truth, rather than copies; the search answers
(Page, DeltaSummary, CompatibleVersion) are deltaformat.api_models', which the client parses."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from deltaformat.api_models import UtcDatetime
from deltaformat.manifest import CarriedFile, CodecInfo, DType, ModelRef, TensorKind


class VersionInfo(BaseModel):
    version: str
    digest: str
    published_at: UtcDatetime
    pushed_by: str | None
    stored_bytes: int
    base_id: str
    base_fingerprint: str
    post_id: str


class DeltaDetail(BaseModel):
    """A delta with its versions (newest first) and tags (``latest`` included)."""

    name: str
    namespace: str
    description: str | None
    created_at: UtcDatetime
    updated_at: UtcDatetime
    latest: str | None
    versions: list[VersionInfo]
    tags: dict[str, str]


class TensorSummary(BaseModel):
    name: str
    kind: TensorKind
    dtype: DType | None
    shape: list[int] | None
    stored_bytes: int


class Commands(BaseModel):
    """Copy-paste commands for this exact version."""

    pull: str = Field(description="a shell command, every argument quoted")
    apply: str = Field(description="a shell command, every argument quoted (put your base model's folder for NEW_BASE)")
    pinned: str = Field(description="the version by digest: REGISTRY/NS/NAME@sha256:...")


class VersionDetail(BaseModel):
    """One version: its parsed manifest.json, summarised, with digests to pin it."""

    name: str
    version: str | None
    digest: str = Field(description="OCI manifest digest: pin with NS/NAME@digest")
    config_digest: str = Field(description="digest of manifest.json")
    format_version: int
    created_at: UtcDatetime = Field(description="when the delta was extracted")
    description: str | None
    license: str | None
    base: ModelRef
    post: ModelRef
    base_shapes_key: str = Field(description="architecture key of the base (tensor names and shapes)")
    codec: CodecInfo
    tensors: int
    kinds: dict[str, int]
    post_parameters: int
    stored_bytes: int
    bytes_per_parameter: float | None
    patched_elements: int
    files: list[CarriedFile] = Field(description="the first 100 files carried (file_count says how many in all)")
    file_count: int
    tensor_list: list[TensorSummary] = Field(description="the first page of tensors, in manifest order")
    tensor_list_next_cursor: str | None = Field(
        None, description="pass as cursor to /api/v1/deltas/{name}/versions/{reference}/tensors for the next page")
    commands: Commands


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    version: str


class ErrorItem(BaseModel):
    code: str = Field(description="OCI error code, e.g. NAME_INVALID, TAG_INVALID, MANIFEST_UNKNOWN, UNAUTHORIZED")
    message: str
    detail: Any = None


class ErrorEnvelope(BaseModel):
    """Every error /v2 and /api answer: the OCI Distribution error envelope."""

    errors: list[ErrorItem]
