"""Codec ``qgroup-zstd-v1`` (lossy): Δ quantised to B bits per element in groups, one scale a group.

Why: group-wise round-to-nearest quantisation of Δ is what delta-compression papers
(Delta-CoMe, DeltaDQ, GPTQ-style baselines) start from; small groups follow the local
magnitude. Each group of G consecutive elements (the first group F, so groups follow the
tensor's rows) gets the scale s = max|Δ| / (2^(B−1) − 1), rounded *up* to bfloat16, and
element codes k = round(Δ / s) in −(2^(B−1) − 1) … 2^(B−1) − 1 (B = 2: ternary −1, 0, 1).
Codes are packed B bits each, least significant first; zstd entropy-codes the packed
bytes (Huffman over 8/B codes at once). format-v2.md §5.2 fixes the layout:

    u8 B (2, 4 or 8) | u32 N (= numel) | u32 G | u32 F | zstd stream: n_groups bf16 scales
    | zstd stream: ceil(numel·B/8) bytes of codes      (both streams absent when numel = 0)

Element i decodes to fp32((c_i − 2^(B−1)) · s_g), exact in float32 (an integer of at most
8 bits times a bf16 value); a decoder refuses scales that are negative, not finite, or
so large that a product could overflow.
"""

from __future__ import annotations

import numpy as np

from deltaformat.codec._lossyframes import (
    U32,
    bf16_ceil,
    bf16_values,
    check_count,
    first_group,
    group_count,
    group_grid,
    group_ids,
    put_stream,
    read_group_layout,
    read_scales,
    reader,
)
from deltaformat.codec.base import LossyCodec, check_finite
from deltaformat.codec.rankzstd import _Reader

BITS = (2, 4, 8)
_F32_MAX = float(np.finfo(np.float32).max)


def scale_limit(bits: int) -> float:
    """The largest scale whose products with every code stay finite in fp32."""
    return _F32_MAX / (1 << (bits - 1))


class QGroupZstd(LossyCodec):
    id = "qgroup-zstd-v1"
    defaults = {"bits": 4, "group": 128}

    def encode_delta(self, delta: np.ndarray, cols: int, lead: int, **params: int | float) -> bytes:
        p = self.settings(**params)
        bits, group = int(p["bits"]), int(p["group"])
        if bits not in BITS:
            raise ValueError(f"{self.id}: bits must be one of {BITS}, not {bits}")
        check_finite(self.id, delta)
        d = np.ascontiguousarray(delta, dtype=np.float32).reshape(-1)
        first = min(first_group(lead, group), max(1, d.size))
        out = bytearray([bits]) + U32.pack(d.size) + U32.pack(group) + U32.pack(first)
        if d.size == 0:
            return bytes(out)
        grid = group_grid(d, first, group)
        scale_bits, codes = _quantise(grid, bits)
        codes = codes.reshape(-1)[group - first : group - first + d.size]
        put_stream(out, scale_bits.astype("<u2"))
        put_stream(out, _pack(codes, bits))
        return bytes(out)

    def decode(self, data: bytes, numel: int, itemsize: int) -> np.ndarray:
        r = reader(data, self.id, numel)
        if itemsize != 4:
            r.fail(f"decodes F32 Δ only, not {itemsize}-byte elements")
        bits = r.u8("bits")
        if bits not in BITS:
            r.fail(f"bits {bits} is not one of {BITS}")
        check_count(r, numel)
        group, first = read_group_layout(r)
        if numel == 0:
            r.end()
            return np.empty(0, np.uint32)
        scales = read_scales(r, group_count(numel, first, group), scale_limit(bits))
        packed = r.stream(-(-numel * bits // 8), "codes")
        r.end()
        codes = _unpack(packed, bits, numel, r)
        values: np.ndarray = (codes.astype(np.float32) - np.float32(1 << (bits - 1))) * scales[group_ids(numel, first, group)]
        return values.view(np.uint32)


CLIP_RATIOS = (1.0, 0.85, 0.7, 0.55, 0.4, 0.3)  # scales tried, as shares of the group's max |Δ|


def _quantise(grid: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``grid`` (one group each), the bf16 scale of lowest squared error among
    ``CLIP_RATIOS`` × max|Δ| / qmax (clipping the outliers pays at 2 bits), and the codes."""
    qmax = (1 << (bits - 1)) - 1
    peak = np.abs(grid).max(axis=1) / np.float32(qmax)
    best_err = np.full(grid.shape[0], np.inf)
    best_scale = np.zeros(grid.shape[0], np.uint16)
    for ratio in CLIP_RATIOS if bits < 8 else (1.0,):
        scale_bits = bf16_ceil(np.minimum(peak * np.float32(ratio), np.float32(scale_limit(bits))))
        approx = _codes(grid, bf16_values(scale_bits), qmax) * bf16_values(scale_bits)[:, None].astype(np.float64)
        err = ((approx - grid) ** 2).sum(axis=1)  # float64: a huge Δ's square overflows float32
        better = err < best_err
        best_err[better], best_scale[better] = err[better], scale_bits[better]
    scales = bf16_values(best_scale)
    return best_scale, (_codes(grid, scales, qmax) + (1 << (bits - 1))).astype(np.uint8)


def _codes(grid: np.ndarray, scales: np.ndarray, qmax: int) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        k = np.where(scales[:, None] > 0, np.rint(grid / scales[:, None]), np.float32(0))
    clipped: np.ndarray = np.clip(k, -qmax, qmax)
    return clipped


def _pack(codes: np.ndarray, bits: int) -> np.ndarray:
    if bits == 8:
        return codes
    per = 8 // bits
    padded = np.zeros(-(-codes.size // per) * per, np.uint8)
    padded[: codes.size] = codes
    lanes = padded.reshape(-1, per)
    out = np.zeros(lanes.shape[0], np.uint8)
    for j in range(per):
        out |= lanes[:, j] << np.uint8(j * bits)
    return out


def _unpack(packed: np.ndarray, bits: int, numel: int, r: _Reader) -> np.ndarray:
    if bits == 8:
        return packed
    per = 8 // bits
    mask = np.uint8((1 << bits) - 1)
    lanes = np.empty((packed.size, per), np.uint8)
    for j in range(per):
        lanes[:, j] = (packed >> np.uint8(j * bits)) & mask
    flat = lanes.reshape(-1)
    if np.any(flat[numel:]):
        r.fail("padding bits after the last code are not 0")
    return flat[:numel]


__all__ = ["QGroupZstd"]
