"""Response models of the native API (/api/v1). Model and tensor descriptions reuse
deltaformat.manifest's models, the single source of truth, rather than copies."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, Field

from deltaformat.manifest import CarriedFile, CodecInfo, DType, ModelRef, TensorKind

T = TypeVar("T")
# The database keeps naive UTC; the API says so (RFC 3339 "...Z"), as its OpenAPI date-time format requires.
UtcDatetime = Annotated[datetime, AfterValidator(lambda t: t if t.tzinfo else t.replace(tzinfo=timezone.utc))]


class Page(BaseModel, Generic[T]):
    """One page of results; pass ``next_cursor`` back as ``cursor`` for the next (null: no more)."""

    items: list[T]
    next_cursor: str | None = None


class DeltaSummary(BaseModel):
    """A delta in a list: its newest version's metadata."""

    name: str = Field(description="NS/NAME")
    namespace: str
    description: str | None
    latest_version: str
    latest_digest: str
    updated_at: UtcDatetime
    base_id: str
    base_revision: str | None
    base_fingerprint: str
    model_type: str | None
    post_id: str
    codec: str
    stored_bytes: int
    post_parameters: int


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


class CompatibleVersion(BaseModel):
    """A version that fits a given base, and how: the exact base, the same model id, or the same tensor shapes."""

    name: str
    version: str
    digest: str
    match: Literal["fingerprint", "id", "shapes"]
    base_id: str
    base_fingerprint: str
    post_id: str
    published_at: UtcDatetime
    stored_bytes: int


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
