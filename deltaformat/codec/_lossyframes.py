"""Pieces the lossy codecs share: bf16 rounding, zstd streams, group layouts, bounded reading.

A *zstd stream of n bytes* is the one of spec §5.2 (u32 length, then one zstd frame that
declares and holds exactly n bytes); reading goes through rank-zstd's bounds-checked reader.
"""

from __future__ import annotations

import struct
import threading

import numpy as np
import zstandard

from deltaformat.codec.rankzstd import _Reader

U16, U32 = struct.Struct("<H"), struct.Struct("<I")
MAX_GROUP = 1 << 22  # a group never spans more than a chunk
BF16_MAX_BITS = np.uint16(0x7F7F)
_local = threading.local()


def _cctx() -> zstandard.ZstdCompressor:
    c = getattr(_local, "cctx", None)
    if c is None:
        c = _local.cctx = zstandard.ZstdCompressor(level=3, write_content_size=True)
    return c


def put_stream(out: bytearray, payload: np.ndarray) -> None:
    """Append a zstd stream of ``payload``'s bytes (at least one byte)."""
    frame = _cctx().compress(np.ascontiguousarray(payload).view(np.uint8).data)
    out += U32.pack(len(frame))
    out += frame


def bf16_bits(values: np.ndarray) -> np.ndarray:
    """Finite float32 values rounded to bfloat16, nearest even; beyond bf16's range, its largest finite value."""
    u = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded: np.ndarray = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)
    sign = rounded & np.uint16(0x8000)
    over = (rounded & np.uint16(0x7FFF)) >= np.uint16(0x7F80)  # rounded up to ∞
    rounded[over] = sign[over] | BF16_MAX_BITS
    return rounded


def bf16_values(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bits as float32 values (exact)."""
    values: np.ndarray = (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)
    return values


def bf16_ceil(values: np.ndarray) -> np.ndarray:
    """Non-negative finite float32 values rounded up to bfloat16 bits (so a scale never shrinks)."""
    u = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    up = ((u + np.uint32(0xFFFF)) >> np.uint32(16)).astype(np.uint16)
    ceiled: np.ndarray = np.minimum(up, BF16_MAX_BITS)
    return ceiled


def group_ids(numel: int, first: int, group: int) -> np.ndarray:
    """Group index of each element: the first group has ``first`` elements, the others ``group``."""
    pos = np.arange(numel, dtype=np.int64)
    return np.where(pos < first, 0, (pos - first) // group + 1)


def group_count(numel: int, first: int, group: int) -> int:
    if numel == 0:
        return 0
    return 1 + (-(-(numel - first) // group) if numel > first else 0)


def first_group(lead: int, group: int) -> int:
    """Length of the first group so that groups follow the tensor's rows (or its groups of ``group``)."""
    return group - lead % group


def check_count(r: _Reader, numel: int) -> None:
    """u32 N, the blob's element count, which must be the manifest's (a chunk's count is < 2^32)."""
    count = r.u32("element count")
    if count != numel:
        r.fail(f"blob holds {count} elements, manifest says {numel}")


def read_group_layout(r: _Reader) -> tuple[int, int]:
    """u32 group size G then u32 first-group length F, checked: 1 <= F <= G <= 2^22."""
    group, first = r.u32("group size"), r.u32("first group size")
    if not 1 <= group <= MAX_GROUP:
        r.fail(f"group size {group} outside 1..{MAX_GROUP}")
    if not 1 <= first <= group:
        r.fail(f"first group size {first} outside 1..{group}")
    return group, first


def read_scales(r: _Reader, n: int, limit: float) -> np.ndarray:
    """A zstd stream of ``n`` bf16 scales, each finite, >= 0 and at most ``limit``."""
    if n == 0:
        return np.empty(0, np.float32)
    scales = bf16_values(r.stream(2 * n, "scales").view("<u2"))
    if not np.all((scales >= 0) & (scales <= limit)):  # also false for NaN
        r.fail(f"a scale is negative, not finite or over {limit:g}")
    return scales


def reader(data: bytes, codec_id: str, numel: int) -> _Reader:
    return _Reader(data, codec_id, numel)


def group_grid(values: np.ndarray, first: int, group: int) -> np.ndarray:
    """``values`` as one row per group (layout as ``group_ids``), zero-padded: the first
    group is padded in front by ``group - first`` zeros, the last one at its end."""
    front = group - first
    padded = np.zeros(-(-(front + values.size) // group) * group, values.dtype)
    padded[front : front + values.size] = values
    return padded.reshape(-1, group)
