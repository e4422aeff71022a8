"""Codec ``bytegroup-zstd``: byte planes, each compressed with zstd level 1.

Floating-point bytes of one significance (sign/exponent vs mantissa) compress far
better together than interleaved; level 1 beats higher levels on such noise-like
planes (measured: higher levels find spurious matches and get slower, not smaller).

Blob layout: for each byte plane k = 0 .. itemsize-1 (little-endian byte order of the
element), a u32 little-endian length L_k, then L_k bytes holding one zstd frame whose
decompressed content is exactly ``numel`` bytes: byte k of every element, in order.
"""

from __future__ import annotations

import struct

import numpy as np
import zstandard

from deltaformat.codec.base import UINT_FOR_ITEMSIZE, Codec
from deltaformat.errors import CorruptBlobError

_LEN = struct.Struct("<I")


class BytegroupZstd(Codec):
    id = "bytegroup-zstd"
    level = 1

    def encode(self, bits: np.ndarray) -> bytes:
        itemsize = bits.dtype.itemsize
        planes = bits.view(np.uint8).reshape(-1, itemsize).T
        cctx = zstandard.ZstdCompressor(level=self.level, write_content_size=True)
        out = bytearray()
        for k in range(itemsize):
            frame = cctx.compress(np.ascontiguousarray(planes[k]).data)
            out += _LEN.pack(len(frame))
            out += frame
        return bytes(out)

    def decode(self, data: bytes, numel: int, itemsize: int) -> np.ndarray:
        out = np.empty((itemsize, numel), dtype=np.uint8)
        dctx = zstandard.ZstdDecompressor()
        view = memoryview(data)
        pos = 0
        for k in range(itemsize):
            if pos + 4 > len(view):
                raise CorruptBlobError(f"bytegroup-zstd: truncated before plane {k}")
            (length,) = _LEN.unpack_from(view, pos)
            pos += 4
            frame = view[pos : pos + length]
            if len(frame) != length:
                raise CorruptBlobError(f"bytegroup-zstd: plane {k} truncated ({len(frame)} of {length} bytes)")
            pos += length
            try:
                params = zstandard.get_frame_parameters(frame)
                if params.content_size != numel:
                    raise CorruptBlobError(
                        f"bytegroup-zstd: plane {k} declares {params.content_size} bytes, manifest says {numel}"
                    )
                plane = dctx.decompress(frame, max_output_size=numel)
            except zstandard.ZstdError as exc:
                raise CorruptBlobError(f"bytegroup-zstd: plane {k}: {exc}") from None
            if len(plane) != numel:
                raise CorruptBlobError(f"bytegroup-zstd: plane {k} decoded to {len(plane)} bytes, expected {numel}")
            out[k] = np.frombuffer(plane, dtype=np.uint8)
        if pos != len(view):
            raise CorruptBlobError(f"bytegroup-zstd: {len(view) - pos} trailing bytes after the last plane")
        return np.ascontiguousarray(out.T).view(UINT_FOR_ITEMSIZE[itemsize]).reshape(numel)
