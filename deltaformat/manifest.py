"""The manifest of a delta artifact: the single source of truth for formats v1 and v2.

These pydantic models define ``manifest.json``; spec/manifest.schema.json is generated
from them (``python -m deltaformat.schema``), and the registry's API shares them.
Every model forbids unknown fields: a reader that meets a field it does not know is
reading a format it does not understand, and must say so rather than guess.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Annotated, Any, Final, Literal, TypedDict

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, ValidationError, field_validator, model_serializer, model_validator

from deltaformat.errors import FormatError

FORMAT_VERSION: Final = 2  # what extract writes by default; FORMAT_VERSIONS are read
FORMAT_VERSIONS = (1, 2)
MANIFEST_MEDIA_TYPE: Final = "application/vnd.paramdelta.manifest.v1+json"
ARTIFACT_TYPE = "application/vnd.paramdelta.delta.v1"
# 2^22, written as a literal so that the models' Literal fields take it
CHUNK_ELEMENTS: Final = 4_194_304  # fixed in v1: every stream and digest uses it, so it bounds each decoded chunk
MAX_TENSOR_ELEMENTS = 1 << 40
MAX_DIMS = 8
# Every blob is read into memory whole, so its recorded size is capped before it is read.
# An encoded chunk is at most its raw bytes (mode 0) plus framing; 1 GiB is far above that.
MAX_BLOB_BYTES = 1 << 30
MAX_MANIFEST_BYTES = 64 << 20  # manifest.json (and an OCI manifest) a reader holds; a registry's default cap is 16 MiB
MAX_CARRIED_FILE_BYTES = 256 << 20  # the largest tokenizer.json on the Hub is ~35 MB

# Carried files: only the side files a tokenizer, chat template or generation settings
# need. Never weights, the index, config.json (kept inline in the manifest), Python, or
# anything else a loader could execute or that could name code to run; see spec §3.3.
CARRIED_FILES = (
    "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt", "spiece.model",
    "sentencepiece.bpe.model", "chat_template.jinja", "chat_template.json",
    "generation_config.json", "preprocessor_config.json",
)
CARRIED_DIRS = {"additional_chat_templates": ".jinja"}  # folder -> the one suffix its files may have
# Files transformers reads as settings whose top-level "auto_map" names classes to import
# (from the Hub with trust_remote_code): a carried file must not name code.
CODE_NAMING_KEYS = ("auto_map",)
CARRIED_SETTINGS_FILES = ("tokenizer_config.json", "preprocessor_config.json", "generation_config.json",
                   "special_tokens_map.json", "added_tokens.json", "chat_template.json")

DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"
NAME_PATTERN = r"^[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)+$"  # NS/NAME, lowercase
VERSION_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$"
Digest = Annotated[str, Field(pattern=DIGEST_PATTERN, description="sha256:<64 lowercase hex>")]
DType = Literal["BOOL", "U8", "I8", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64", "I64", "U64", "F8_E4M3", "F8_E5M2"]
TensorKind = Literal["changed", "unchanged", "added", "removed", "resized"]

_PATH_PART = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")  # no empty, ".", ".." or hidden components


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class _Versioned(_Strict):
    """A model with fields that exist in one format version only: absent (not null) when unset,
    so a v1 manifest written today has exactly the bytes v1 always had."""

    _ABSENT_WHEN_NONE: tuple[str, ...] = ()

    @model_serializer(mode="wrap")
    def _drop_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for key in self._ABSENT_WHEN_NONE:
            if data.get(key) is None:
                data.pop(key, None)
        return data


class TensorInfo(_Strict):
    """One side (base or post) of a tensor: its shape, dtype and content digest."""

    shape: list[Annotated[int, Field(ge=0, le=MAX_TENSOR_ELEMENTS)]] = Field(max_length=MAX_DIMS)
    dtype: DType
    digest: Digest = Field(description="Chunked sha256 of the raw little-endian bytes (spec: Tensor digests)")

    @field_validator("shape")
    @classmethod
    def _bounded(cls, shape: list[int]) -> list[int]:
        numel = math.prod(shape)
        if numel > MAX_TENSOR_ELEMENTS:
            raise ValueError(f"shape {shape} has {numel} elements, over the limit of {MAX_TENSOR_ELEMENTS}")
        return shape

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class Chunk(_Strict):
    """One encoded chunk of a stream, stored as one content-addressed blob."""

    digest: Digest
    size: int = Field(ge=0, le=MAX_BLOB_BYTES, description="Encoded size in bytes")


class LossyInfo(_Strict):
    """Marks a stream as an approximation of the exact Δ (v2): how it was made and how far off it is.

    The errors are measured by the writer, per tensor, between the decoded stream and the
    exact fp32 Δ = fp32(post) − fp32(base); they are what the artifact's identity digest
    vouches for, and what verify and apply report instead of claiming bit-exactness.
    """

    params: dict[str, int | float | str] = Field(
        default_factory=dict, description="the encoder's settings (informative; each blob carries what its decoder needs)")
    max_abs_error: float = Field(ge=0, description="max |decoded − exact Δ| over the tensor's elements")
    rel_frobenius_error: float = Field(ge=0, description="‖decoded − exact Δ‖₂ / ‖exact Δ‖₂ (0 when both are 0)")
    delta_frobenius_norm: float = Field(ge=0, description="‖exact Δ‖₂ over the tensor's elements")


class Stream(_Versioned):
    """A flat array of elements, split into chunks of ``chunk_elements`` and encoded by ``codec``."""

    _ABSENT_WHEN_NONE = ("digest", "lossy")

    codec: str
    dtype: DType = Field(description="dtype of the decoded elements")
    numel: int = Field(ge=0, le=MAX_TENSOR_ELEMENTS)
    chunk_elements: Literal[4194304] = Field(CHUNK_ELEMENTS, description="elements per chunk: 2^22")
    chunks: list[Chunk]
    digest: Digest | None = Field(None, description="v1 only (required there): chunked sha256 of the decoded elements' raw bytes")
    lossy: LossyInfo | None = Field(None, description="v2 only: present exactly when the stream approximates the exact Δ")

    @model_validator(mode="after")
    def _chunk_count(self) -> Stream:
        expected = -(-self.numel // self.chunk_elements)
        if len(self.chunks) != expected:
            raise ValueError(f"{len(self.chunks)} chunks for {self.numel} elements of {self.chunk_elements} per chunk; expected {expected}")
        return self


class Patch(_Strict):
    """Elements where fp32 arithmetic cannot reproduce post from base (spec: Exactness).

    Applied only with a single artifact at alpha 1, and only where the base element is
    bitwise equal to ``base`` recorded here: that makes apply on the original base exact.
    """

    digest: Digest
    size: int = Field(ge=0, le=MAX_BLOB_BYTES)
    count: int = Field(ge=1, le=MAX_TENSOR_ELEMENTS, description="patched elements: at most the elements base and post share")


class TensorEntry(_Strict):
    name: str = Field(min_length=1, max_length=1024)
    kind: TensorKind
    base: TensorInfo | None = None
    post: TensorInfo | None = None
    delta: Stream | None = Field(None, description="fp32 Δ over the elements base and post share")
    values: Stream | None = Field(None, description="post values stored in full: the whole tensor (added) or the new rows (resized)")
    patch: Patch | None = None

    @model_validator(mode="after")
    def _consistent(self) -> TensorEntry:
        need = {
            "changed": (True, True, True, False),
            "unchanged": (True, True, False, False),
            "added": (False, True, False, True),
            "removed": (True, False, False, False),
            "resized": (True, True, None, None),
        }[self.kind]
        for field, want in zip(("base", "post", "delta", "values"), need):
            have = getattr(self, field) is not None
            if want is not None and have != want:
                raise ValueError(f"tensor {self.name!r} of kind {self.kind!r} must {'have' if want else 'not have'} {field!r}")
        base, post = self.base, self.post  # both present for the kinds checked below (see ``need``)
        if self.kind in ("changed", "unchanged") and base is not None and post is not None and base.shape != post.shape:
            raise ValueError(f"tensor {self.name!r}: base and post shapes differ but kind is {self.kind!r}")
        if self.kind == "resized" and base is not None and post is not None and base.shape[1:] != post.shape[1:]:
            raise ValueError(f"tensor {self.name!r}: only the first dimension may be resized")
        if self.delta is not None and self.delta.dtype != "F32":
            raise ValueError(f"tensor {self.name!r}: delta streams are F32")
        if self.values is not None and self.values.lossy is not None:
            raise ValueError(f"tensor {self.name!r}: values streams are always exact")
        if self.patch is not None and self.delta is not None and self.delta.lossy is not None:
            raise ValueError(f"tensor {self.name!r}: a lossy delta carries no patch (patches complete an exact Δ)")
        if self.patch is not None and self.kind not in ("changed", "resized"):
            raise ValueError(f"tensor {self.name!r}: only changed or resized tensors carry a patch")
        self._sizes_follow_shapes()
        return self

    def _sizes_follow_shapes(self) -> None:
        """Every stream and patch size is implied by the shapes: a reader allocates by them,
        so a manifest may not claim more (or other) elements than its tensor has."""
        post_n = self.post.numel if self.post is not None else 0
        shared = min(self.base.numel, post_n) if self.base is not None else 0
        if self.delta is not None and self.delta.numel != shared:
            raise ValueError(f"tensor {self.name!r}: delta has {self.delta.numel} elements; its shapes imply {shared}")
        if self.kind == "resized" and (self.delta is not None) != (shared > 0):
            raise ValueError(f"tensor {self.name!r}: a resized tensor has a delta exactly when it shares elements ({shared})")
        if self.values is not None and self.values.numel != post_n - shared:
            raise ValueError(f"tensor {self.name!r}: values has {self.values.numel} elements; its shapes imply {post_n - shared}")
        if self.kind == "resized" and (self.values is not None) != (post_n > shared):
            raise ValueError(f"tensor {self.name!r}: a resized tensor has values exactly when post is longer than base")
        if self.values is not None and self.post is not None and self.values.dtype != self.post.dtype:
            raise ValueError(f"tensor {self.name!r}: values are {self.values.dtype}, post is {self.post.dtype}")
        if self.patch is not None and self.patch.count > shared:
            raise ValueError(f"tensor {self.name!r}: patch of {self.patch.count} elements; the tensor shares {shared}")


class CarriedFile(_Versioned):
    """A file of the post model carried in the artifact (tokenizer, chat template...).

    ``digest`` and ``size`` are the stored blob's. In v1 the blob is the file itself; in
    v2 it is one zstd frame whose content is the file, of ``content_size`` bytes.
    """

    _ABSENT_WHEN_NONE = ("encoding", "content_size")

    path: str = Field(max_length=255)
    digest: Digest
    size: int = Field(ge=0, le=MAX_CARRIED_FILE_BYTES)
    encoding: Literal["zstd"] | None = Field(None, description="v2 only (required there): how the blob holds the file")
    content_size: int | None = Field(None, ge=0, le=MAX_CARRIED_FILE_BYTES, description="v2 only (required there): the file's size")

    @field_validator("path")
    @classmethod
    def _allowed(cls, path: str) -> str:
        check_carried_path(path)
        return path


class Architecture(_Strict):
    """A summary of config.json, enough to find compatible bases without the weights."""

    model_type: str | None = None
    architectures: list[str] = []
    hidden_size: int | None = None
    num_hidden_layers: int | None = None
    vocab_size: int | None = None
    torch_dtype: str | None = None


class ModelRef(_Strict):
    """Names a model exactly: where it came from and what it contained."""

    id: str = Field(description="Hub id (org/name) or the local folder's name")
    source: Literal["hub", "local"]
    revision: str | None = Field(None, description="Revision asked for (branch, tag or commit)")
    commit: str | None = Field(None, description="Resolved Hub commit sha, when known")
    fingerprint: Digest = Field(description="sha256 over the sorted (name, shape, dtype, digest) of every tensor")
    num_tensors: int = Field(ge=0)
    num_parameters: int = Field(ge=0)
    architecture: Architecture = Architecture()


class CodecInfo(_Strict):
    delta: str
    values: str


class ToolInfo(_Strict):
    name: str = "paramdelta"
    version: str


class LossyErrors(TypedDict):
    """Manifest.lossy_errors(): the worst recorded errors over every lossy tensor."""

    max_abs_error: float
    max_rel_frobenius_error: float
    rel_frobenius_error: float
    lossy_tensors: int


class ManifestSummary(TypedDict):
    """Manifest.summary(): a plain dict (JSON-ready, as inspect returns it); typed so callers index known keys."""

    tensors: int
    kinds: dict[str, int]
    post_parameters: int
    stored_bytes: int
    bytes_per_parameter: float | None  # None: no parameters
    patched_elements: int
    files: list[str]
    exact: bool
    lossy_preset: str | None
    lossy_errors: LossyErrors | None  # None exactly when exact


class Manifest(_Versioned):
    _ABSENT_WHEN_NONE = ("exact", "lossy_preset")

    format_version: Literal[1, 2] = FORMAT_VERSION
    media_type: Literal["application/vnd.paramdelta.manifest.v1+json"] = Field(
        MANIFEST_MEDIA_TYPE, description="names the document (and the OCI config) in every version; format_version says which")
    name: str | None = Field(None, pattern=NAME_PATTERN, description="NS/NAME")
    version: str | None = Field(None, pattern=VERSION_PATTERN)
    description: str | None = Field(None, max_length=10000)
    license: str | None = Field(None, max_length=200)
    created_at: datetime
    tool: ToolInfo
    base: ModelRef
    post: ModelRef
    chunk_elements: Literal[4194304] = Field(CHUNK_ELEMENTS, description="elements per digest chunk: 2^22 in v1")
    codec: CodecInfo
    tensors: list[TensorEntry]
    files: list[CarriedFile] = []
    base_config: dict[str, Any] = Field(default_factory=dict, description="The base model's config.json")
    post_config: dict[str, Any] = Field(default_factory=dict, description="The post model's config.json, for reference and for apply")
    annotations: dict[str, str] = {}
    exact: bool | None = Field(None, description="v2 only (required there): true exactly when no stream is lossy")
    lossy_preset: str | None = Field(None, max_length=64, description="v2 only: the preset a lossy artifact was written with")

    @model_validator(mode="after")
    def _versioned_fields(self) -> Manifest:
        """Each version has exactly its own fields; a v2 manifest says plainly whether it is exact."""
        streams = [(t.name, s) for t in self.tensors for s in (t.delta, t.values) if s is not None]
        if self.format_version == 1:
            v2 = [f"tensor {n!r} stream lossy" for n, s in streams if s.lossy is not None]
            v2 += [f"file {f.path!r} encoding" for f in self.files if f.encoding is not None or f.content_size is not None]
            v2 += [k for k in ("exact", "lossy_preset") if getattr(self, k) is not None]
            if v2:
                raise ValueError(f"format_version 1 has no field {v2[0]} (a format_version 2 field)")
            missing = [n for n, s in streams if s.digest is None]
            if missing:
                raise ValueError(f"tensor {missing[0]!r}: a format_version 1 stream needs its digest")
            return self
        if self.exact is None:
            raise ValueError("format_version 2 needs 'exact' (true when no stream is lossy)")
        with_digest = [n for n, s in streams if s.digest is not None]
        if with_digest:
            raise ValueError(f"tensor {with_digest[0]!r}: format_version 2 streams have no digest (their blobs' digests fix them)")
        unencoded = [f.path for f in self.files if f.encoding is None or f.content_size is None]
        if unencoded:
            raise ValueError(f"file {unencoded[0]!r}: format_version 2 carried files need encoding and content_size")
        lossy = [n for n, s in streams if s.lossy is not None]
        if self.exact and lossy:
            raise ValueError(f"exact is true but tensor {lossy[0]!r} has a lossy stream")
        if not self.exact and not lossy:
            raise ValueError("exact is false but no stream is lossy")
        if (self.lossy_preset is not None) == self.exact:
            raise ValueError("lossy_preset is given exactly when exact is false")
        return self

    @property
    def is_lossy(self) -> bool:
        """Whether any stream approximates the exact Δ (never in v1)."""
        return self.exact is False

    def lossy_errors(self) -> LossyErrors | None:
        """The worst recorded errors over every lossy tensor (None for an exact artifact)."""
        infos = [t.delta.lossy for t in self.tensors if t.delta is not None and t.delta.lossy is not None]
        if not infos:
            return None
        total = sum(i.delta_frobenius_norm ** 2 for i in infos)
        err = sum((i.rel_frobenius_error * i.delta_frobenius_norm) ** 2 for i in infos)
        return {"max_abs_error": max(i.max_abs_error for i in infos),
                "max_rel_frobenius_error": max(i.rel_frobenius_error for i in infos),
                "rel_frobenius_error": math.sqrt(err / total) if total else 0.0,
                "lossy_tensors": len(infos)}

    @model_validator(mode="after")
    def _unique(self) -> Manifest:
        for label, names in (("tensor", [t.name for t in self.tensors]), ("file", [f.path for f in self.files])):
            seen: set[str] = set()
            for n in names:
                if n in seen:
                    raise ValueError(f"duplicate {label} {n!r}")
                seen.add(n)
        return self

    # -- helpers -----------------------------------------------------------------
    def blob_digests(self) -> list[str]:
        """Every blob the artifact needs, each once, in manifest order."""
        return list(self.blob_sizes())

    def blob_sizes(self) -> dict[str, int]:
        """Size of every blob the artifact needs, keyed by digest, in manifest order."""
        sizes: dict[str, int] = {}
        for t in self.tensors:
            for s in (t.delta, t.values):
                if s is not None:
                    for c in s.chunks:
                        sizes[c.digest] = c.size
            if t.patch is not None:
                sizes[t.patch.digest] = t.patch.size
        for f in self.files:
            sizes[f.digest] = f.size
        return sizes

    def stored_bytes(self) -> int:
        return sum(self.blob_sizes().values())

    def summary(self) -> ManifestSummary:
        kinds: dict[str, int] = {}
        for t in self.tensors:
            kinds[t.kind] = kinds.get(t.kind, 0) + 1
        params = sum(t.post.numel for t in self.tensors if t.post is not None)
        stored = self.stored_bytes()
        return {
            "tensors": len(self.tensors),
            "kinds": kinds,
            "post_parameters": params,
            "stored_bytes": stored,
            "bytes_per_parameter": (stored / params) if params else None,
            "patched_elements": sum(t.patch.count for t in self.tensors if t.patch is not None),
            "files": [f.path for f in self.files],
            "exact": not self.is_lossy,
            "lossy_preset": self.lossy_preset,
            "lossy_errors": self.lossy_errors(),
        }


def check_carried_path(path: str) -> None:
    """Raise ValueError unless ``path`` is on the carried-file allow-list (spec §3.3).

    Why an allow-list: a carried file lands in the output model folder, next to the
    weights apply verified; anything a loader reads as weights, config or code there
    would replace what was proven.
    """
    parts = path.split("/")
    if not all(_PATH_PART.match(p) for p in parts):
        raise ValueError(f"unsafe carried file path {path!r}: components of [A-Za-z0-9._-], none empty, hidden, '.' or '..'")
    allowed = path in CARRIED_FILES or (
        len(parts) == 2 and parts[0] in CARRIED_DIRS and parts[1].endswith(CARRIED_DIRS[parts[0]]))
    if not allowed:
        raise ValueError(f"carried file {path!r} is not a tokenizer, chat template or generation file paramdelta may carry "
                         f"(allowed: {', '.join(CARRIED_FILES)}, additional_chat_templates/*.jinja)")


def check_carried_content(path: str, data: bytes) -> None:
    """Raise FormatError when a carried settings file names code for a loader to import."""
    if path not in CARRIED_SETTINGS_FILES:
        return
    try:
        doc = pydantic_core.from_json(data)
    except ValueError as exc:
        raise FormatError(f"carried file {path!r} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise FormatError(f"carried file {path!r} must hold a JSON object")
    named = [k for k in CODE_NAMING_KEYS if k in doc]
    if named:
        raise FormatError(f"carried file {path!r} has {named[0]!r}, which names code to import; paramdelta never carries code")


def decode_carried(f: CarriedFile, blob: bytes) -> bytes:
    """A carried file's content from its (already digest-checked) blob: the blob itself in v1,
    its one zstd frame's content in v2, which must declare and hold exactly ``content_size`` bytes."""
    if f.encoding is None:
        return blob
    import zstandard

    try:
        declared = zstandard.get_frame_parameters(blob).content_size
        if declared != f.content_size:
            raise FormatError(f"carried file {f.path!r}: its zstd frame declares {declared} bytes, the manifest {f.content_size}")
        data = zstandard.ZstdDecompressor().decompress(blob, max_output_size=f.content_size, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise FormatError(f"carried file {f.path!r}: not one zstd frame ({exc})") from None
    if len(data) != f.content_size:
        raise FormatError(f"carried file {f.path!r}: decoded to {len(data)} bytes, the manifest says {f.content_size}")
    return data


def check_metadata(name: str | None, version: str | None, description: str | None = None, license: str | None = None) -> None:
    """Raise ValueError, naming the rule, for descriptive fields a manifest cannot hold."""
    if name is not None and not re.match(NAME_PATTERN, name):
        raise ValueError(f"name {name!r} must be NS/NAME: lowercase letters and digits, runs joined by . _ - (e.g. meta/llama3-inst)")
    if version is not None and not re.match(VERSION_PATTERN, version):
        raise ValueError(f"version {version!r} must match [A-Za-z0-9_][A-Za-z0-9._-]{{0,127}}")
    for field, value, limit in (("description", description, 10000), ("license", license, 200)):
        if value is not None and len(value) > limit:
            raise ValueError(f"{field} has {len(value)} characters; at most {limit}")


def parse_manifest(data: bytes) -> Manifest:
    """Parse manifest bytes, rejecting other format versions with a message that says so.

    pydantic_core's parser bounds nesting depth (json.loads recursed until RecursionError
    on a manifest nested 5000 deep) and refuses out-of-range numbers, both as ValueError.
    """
    try:
        raw = pydantic_core.from_json(data)
    except ValueError as exc:
        raise FormatError(f"manifest.json is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise FormatError("manifest.json must hold a JSON object")
    version = raw.get("format_version")
    if version not in FORMAT_VERSIONS or isinstance(version, bool):
        raise FormatError(
            f"manifest format_version is {version!r}; this paramdelta reads format_version "
            f"{' and '.join(map(str, FORMAT_VERSIONS))} only"
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise FormatError(f"manifest field {where}: {first['msg']}{more}") from None


def dump_manifest(manifest: Manifest) -> bytes:
    """Serialise a manifest deterministically (sorted keys, 1-space indent, trailing newline)."""
    import json

    return (json.dumps(manifest.model_dump(mode="json"), sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode()
