"""Patches: the few elements where fp32 arithmetic cannot give post back from base.

Blob layout: one zstd frame whose content is, for ``count`` elements,
``count`` u64 LE flat indices (strictly increasing), then ``count`` base elements' raw
bits, then ``count`` post elements' raw bits (each in its dtype's width, little-endian).
"""

from __future__ import annotations

import numpy as np
import zstandard

from deltaformat.errors import CorruptBlobError
from deltaformat.rawbits import UINT_FOR_ITEMSIZE


def encode_patch(indices: np.ndarray, base_bits: np.ndarray, post_bits: np.ndarray) -> bytes:
    payload = indices.astype("<u8").tobytes() + base_bits.tobytes() + post_bits.tobytes()
    return zstandard.ZstdCompressor(level=3, write_content_size=True).compress(payload)


def decode_patch(data: bytes, count: int, base_itemsize: int, post_itemsize: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    size = count * (8 + base_itemsize + post_itemsize)
    try:
        if zstandard.get_frame_parameters(data).content_size != size:
            raise CorruptBlobError(f"patch frame does not hold {count} elements")
        payload = zstandard.ZstdDecompressor().decompress(data, max_output_size=size)
    except zstandard.ZstdError as exc:
        raise CorruptBlobError(f"patch: {exc}") from None
    if len(payload) != size:
        raise CorruptBlobError(f"patch decoded to {len(payload)} bytes, expected {size}")
    idx = np.frombuffer(payload, dtype="<u8", count=count)
    b = np.frombuffer(payload, dtype=UINT_FOR_ITEMSIZE[base_itemsize], count=count, offset=8 * count)
    p = np.frombuffer(payload, dtype=UINT_FOR_ITEMSIZE[post_itemsize], count=count, offset=(8 + base_itemsize) * count)
    if count > 1 and not np.all(idx[1:] > idx[:-1]):
        raise CorruptBlobError("patch indices are not strictly increasing")
    return idx, b, p
