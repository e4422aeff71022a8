"""Lossy presets: which lossy codec and settings extract uses for which tensors (format v2).

A preset maps every changed tensor's Δ to a lossy codec: matrices (2+ dimensions, rows
and columns both >= 2) to the preset's method, vectors (biases, norms) and other small
tensors to bf16 rounding (they are a tiny share of the bytes and low-rank or sign
coding makes no sense for them). Values of added tensors and new rows of resized
ones stay exact (they are not a Δ). The error statistics ``ErrorStats`` gathers are
written per tensor into the manifest (``LossyInfo``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from deltaformat.codec import LossyCodec, get_lossy_codec
from deltaformat.manifest import LossyInfo

VECTOR_CODEC: tuple[str, dict[str, int | float]] = ("bf16-rank-zstd-v1", {})
SMALL_TENSOR = 256  # elements: below this a tensor is coded as a vector whatever its shape


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    codec: str
    params: dict[str, int | float] = field(default_factory=dict)

    def for_tensor(self, shape: list[int]) -> tuple[LossyCodec, dict[str, int | float]]:
        """The codec and settings for a tensor of ``shape``."""
        if is_matrix(shape):
            codec = get_lossy_codec(self.codec)
            return codec, codec.settings(**self.params)
        return get_lossy_codec(VECTOR_CODEC[0]), dict(VECTOR_CODEC[1])


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("bf16", "Δ rounded to bfloat16 (the arithmetic of most post-training)", "bf16-rank-zstd-v1"),
    Preset("q8", "8-bit group quantisation, groups of 128, bf16 scales", "qgroup-zstd-v1", {"bits": 8, "group": 128}),
    Preset("q4", "4-bit group quantisation, groups of 128, bf16 scales", "qgroup-zstd-v1", {"bits": 4, "group": 128}),
    Preset("q2", "2-bit (ternary) group quantisation, groups of 64, bf16 scales", "qgroup-zstd-v1", {"bits": 2, "group": 64}),
    Preset("sign", "BitDelta-style sign bits and one scale (mean |Δ|) per row", "sign-zstd-v1", {"group": 0}),
    Preset("lowrank", "truncated SVD per chunk of rows keeping 90 % of ‖Δ‖², rank ≤ 256", "lowrank-bf16-v1",
           {"energy": 0.9, "max_rank": 256, "budget": 0.0}),
    Preset("small", "truncated SVD per chunk of rows, 99 % of ‖Δ‖² but at most 0.08 bytes per element of each matrix",
           "lowrank-bf16-v1", {"energy": 0.99, "max_rank": 1024, "budget": 0.08}),
)}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown lossy preset {name!r}: use one of {', '.join(PRESETS)}") from None


def is_matrix(shape: list[int]) -> bool:
    return len(shape) >= 2 and shape[0] >= 2 and math.prod(shape[1:]) >= 2 and math.prod(shape) >= SMALL_TENSOR


def columns(shape: list[int]) -> int:
    """Elements per row as LoRA and the codecs see a weight: [rows, everything else]."""
    return max(1, math.prod(shape[1:])) if len(shape) >= 2 else max(1, math.prod(shape))


@dataclass
class ErrorStats:
    """Errors of one chunk's decoded Δ against the exact Δ, summed over a tensor's chunks."""

    max_abs: float = 0.0
    err_sq: float = 0.0
    delta_sq: float = 0.0

    @classmethod
    def of(cls, exact: np.ndarray, decoded: np.ndarray) -> ErrorStats:
        e = decoded.astype(np.float64) - exact.astype(np.float64)
        return cls(float(np.abs(e).max()) if e.size else 0.0, float(e @ e), float(exact.astype(np.float64) @ exact.astype(np.float64)))

    def add(self, other: ErrorStats) -> None:
        self.max_abs = max(self.max_abs, other.max_abs)
        self.err_sq += other.err_sq
        self.delta_sq += other.delta_sq

    def info(self, params: dict[str, int | float]) -> LossyInfo:
        rel = math.sqrt(self.err_sq / self.delta_sq) if self.delta_sq > 0 else (0.0 if self.err_sq == 0 else math.inf)
        if not math.isfinite(rel):  # a Δ of zeros decoded to non-zeros: no codec here does that
            raise ValueError("a lossy codec turned an all-zero Δ into non-zero values")
        return LossyInfo(params=dict(params), max_abs_error=self.max_abs, rel_frobenius_error=rel,
                         delta_frobenius_norm=math.sqrt(self.delta_sq))


__all__ = ["PRESETS", "Preset", "get_preset", "ErrorStats", "is_matrix", "columns"]
