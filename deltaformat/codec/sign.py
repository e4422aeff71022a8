"""Codec ``sign-zstd-v1`` (lossy): BitDelta-style Δ ≈ sign(Δ) · s, one scale per group.

Why: BitDelta (arXiv 2402.10193) keeps only the sign of each Δ element and one scale per
matrix, the mean |Δ| (the scale minimising the L2 error of a sign approximation), and
reports fine-tunes that keep most of their quality at 1 bit per parameter. Here a group
is by default one row of the tensor (finer than BitDelta's per-matrix scale at the
same size); a group that is all zero (rows a fine-tune never touched, e.g. unused
vocabulary) has scale 0 and decodes to zeros. format-v2.md §5.3 fixes the layout:

    u32 N (= numel) | u32 G | u32 F | zstd stream: n_groups bf16 scales | zstd stream: ceil(numel/8) sign bytes

Bit i % 8 (least significant first) of sign byte i // 8 is 1 when element i is negative;
padding bits are 0. Element i decodes to −s_g when its bit is 1, else s_g (exact).
"""

from __future__ import annotations

import numpy as np

from deltaformat.codec._lossyframes import (
    MAX_GROUP,
    U32,
    bf16_bits,
    check_count,
    first_group,
    group_count,
    group_ids,
    put_stream,
    read_group_layout,
    read_scales,
    reader,
)
from deltaformat.codec.base import LossyCodec, check_finite

_F32_MAX = float(np.finfo(np.float32).max)


class SignZstd(LossyCodec):
    id = "sign-zstd-v1"
    defaults = {"group": 0}  # 0: one group per row of the tensor

    def encode_delta(self, delta: np.ndarray, cols: int, lead: int, **params: int | float) -> bytes:
        p = self.settings(**params)
        group = int(p["group"]) or min(cols, MAX_GROUP)
        check_finite(self.id, delta)
        d = np.ascontiguousarray(delta, dtype=np.float32).reshape(-1)
        first = min(first_group(lead, group), max(1, d.size))
        out = bytearray(U32.pack(d.size) + U32.pack(group) + U32.pack(first))
        if d.size == 0:
            return bytes(out)
        gid = group_ids(d.size, first, group)
        n = group_count(d.size, first, group)
        total = np.bincount(gid, weights=np.abs(d).astype(np.float64), minlength=n)
        count = np.bincount(gid, minlength=n)
        put_stream(out, bf16_bits((total / count).astype(np.float32)).astype("<u2"))
        put_stream(out, np.packbits(np.signbit(d), bitorder="little"))
        return bytes(out)

    def decode(self, data: bytes, numel: int, itemsize: int) -> np.ndarray:
        r = reader(data, self.id, numel)
        if itemsize != 4:
            r.fail(f"decodes F32 Δ only, not {itemsize}-byte elements")
        check_count(r, numel)
        group, first = read_group_layout(r)
        if numel == 0:
            r.end()
            return np.empty(0, np.uint32)
        scales = read_scales(r, group_count(numel, first, group), _F32_MAX)
        packed = r.stream(-(-numel // 8), "signs")
        r.end()
        if numel % 8 and packed[-1] >> (numel % 8):
            r.fail("padding bits after the last sign are not 0")
        negative = np.unpackbits(packed, count=numel, bitorder="little").view(bool)
        values: np.ndarray = scales[group_ids(numel, first, group)]
        np.negative(values, out=values, where=negative)
        return values.view(np.uint32)
