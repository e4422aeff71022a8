"""Codec ``bf16-rank-zstd-v1`` (lossy): Δ rounded to bfloat16, coded like the exact Δ.

Why: bf16 is the arithmetic most post-training already runs in, and ParamΔ's paper
takes Δ in it; rounding the fp32 Δ of two checkpoints to bf16 (nearest even) keeps 8
significant bits per element. The blob is a ``rank-zstd-v1`` blob of the ``numel``
bf16 bit patterns (2-byte elements); element i decodes to the float32 whose top 16 bits
are bf16 element i and whose low 16 bits are 0 (exact). Spec: format-v2.md §5.1.
"""

from __future__ import annotations

import numpy as np

from deltaformat.codec._lossyframes import bf16_bits
from deltaformat.codec.base import LossyCodec, check_finite
from deltaformat.codec.rankzstd import RankZstd


class Bf16RankZstd(LossyCodec):
    id = "bf16-rank-zstd-v1"
    defaults = {}

    def encode_delta(self, delta: np.ndarray, cols: int, lead: int, **params: int | float) -> bytes:
        self.settings(**params)
        check_finite(self.id, delta)
        return RankZstd().encode(bf16_bits(delta))

    def decode(self, data: bytes, numel: int, itemsize: int) -> np.ndarray:
        if itemsize != 4:
            from deltaformat.errors import CorruptBlobError

            raise CorruptBlobError(f"{self.id}: decodes F32 Δ only, not {itemsize}-byte elements")
        half = RankZstd().decode(data, numel, 2)
        bits: np.ndarray = half.astype(np.uint32) << np.uint32(16)
        return bits
