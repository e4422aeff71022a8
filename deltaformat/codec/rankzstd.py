"""Codec ``rank-zstd-v1``: a table of the most frequent values, one rank byte per element.

Why: an exact fp32 Δ = fp32(post) - fp32(base) of bf16 checkpoints takes few distinct
values (about 9,000 in a 4 Mi-element chunk of the stand-in) with a very skewed
distribution. Coding every element by its rank in a table of the 255 most frequent
values leaves one byte per element whose order-0 statistics zstd's Huffman literal
coder captures almost exactly; the rare rest (about 1.5 % of the stand-in's elements
at relative Δ 0.009) are escapes whose raw bits go to byte planes. Where one value
dominates (a sparse fine-tune: most Δ are 0) a bitmap of "not the top value" replaces
its byte, which Huffman cannot code in under 1 bit and zstd would otherwise code as
spurious matches of runs. Where ranks do not pay (random bits, every value distinct,
raw weights) the chunk falls back to plain byte planes.

Speed: the table comes from a histogram of the element's top 16 bits (``np.bincount``
over a subsample), so no sort of the chunk is needed; encode and decode are a few
numpy passes (lookup-table gathers, ``flatnonzero``) and zstd calls, all of which
release the GIL, so chunks can be coded in parallel threads.

Blob layout (version 1; a different layout gets a different codec id). All integers
are unsigned little-endian; ``W`` is the element width in bytes (the decoder gets it,
with ``numel``, from the caller); "element bits" are the ``W``-byte little-endian
encoding of an element. A *zstd stream of n bytes* (n >= 1) is a u32 ``L`` followed by
``L`` bytes holding exactly one zstd frame (RFC 8878) that declares content size ``n``
in its header and decompresses to exactly ``n`` bytes, with nothing after the frame
inside the ``L`` bytes. A *plane set of n elements* is ``W`` zstd streams of n bytes each, stream k
holding byte k (k = 0 is the least significant) of each of the n elements, in order;
a plane set of 0 elements is empty (no streams at all).

Byte 0 is the mode ``m``; what follows depends on it:

* ``m = 0`` (raw): ``numel * W`` bytes, the element bits in order.
* ``m = 1`` (planes): a plane set of ``numel`` elements (the ``bytegroup-zstd`` payload).
* ``m = 2`` (table), only for ``1 <= numel < 2**32``:

  - u32 ``N``: the element count, must equal ``numel``;
  - u8 ``K``, 1 <= K <= 255: the table size;
  - ``K * W`` bytes: table entries ``T[0..K-1]``, each as element bits;
  - u32 ``E``: the number of escapes, ``E <= numel``;
  - a zstd stream of ``numel`` bytes: the symbols ``s_i``, one per element in order.
    ``s_i < K`` means element i is ``T[s_i]``; ``s_i >= K`` means element i is an
    escape (the encoder writes 255). The number of symbols ``>= K`` must equal ``E``;
  - only if ``E > 0``: a plane set of ``E`` elements: the escaped elements, in order.

* ``m = 3`` (table with a bitmap for the top value), only for ``1 <= numel < 2**32``:

  - u32 ``N``, u8 ``K``, table ``T`` and u32 ``E`` as for ``m = 2``;
  - u32 ``M``: the number of elements that are not ``T[0]`` (``E <= M <= numel``);
  - u32 ``B`` then ``B`` bytes: the bitmap, itself a complete ``rank-zstd-v1`` blob
    (any mode, this layout applied recursively) of ``ceil(numel / 8)`` elements of
    width 1. Bit ``i % 8`` (LSB first) of bitmap byte ``i // 8`` is 1 when element i
    is not ``T[0]``; exactly ``M`` bits are 1 and the padding bits after bit
    ``numel - 1`` are 0. A bitmap blob may use ``m = 3`` again, but at most 3 levels
    deep (the top blob is level 0; a blob at level 3 must not use ``m = 3``);
  - only if ``M > 0``: a zstd stream of ``M`` bytes: the symbols of the elements whose
    bit is 1, in order, read as for ``m = 2`` (exactly ``E`` of them are ``>= K``);
  - only if ``E > 0``: a plane set of ``E`` elements: the escaped elements, in order.

Nothing may follow the last field. Table entries need not be distinct or sorted. The
decoder allocates at most a small constant times ``numel * W`` bytes whatever the blob
says: every declared size is checked against ``numel`` before anything is decompressed,
and any violation of the above raises ``CorruptBlobError``.

Encoder policy (not part of the format; any choice decodes): ``numel == 0`` -> m = 0;
``numel < 4096`` -> every mode is tried and the smallest blob kept; otherwise a
histogram of the top 16 bits ("heads") of about 2^18 evenly strided elements picks the
K <= 255 most frequent heads (ties: smaller head first), whose values with all lower
bits 0 form ``T`` in that order; an element is coded as ``T[s]`` only when it equals it
exactly, else it is an escape. If the sample predicts more than 45 % escapes: m = 1;
else if ``T[0]`` holds more than 30 % of the sample: m = 3 (at most 3 levels); else
m = 2. Symbol streams use zstd level-1 parameters with hash log 6 and minimum match 7
(few matches: rank bytes are memoryless); byte planes use plain level 1; a bitmap is
encoded by this same policy.
"""

from __future__ import annotations

import struct
import sys
import threading
from typing import NoReturn

import numpy as np
import zstandard

from deltaformat.codec.base import UINT_FOR_ITEMSIZE, Codec, Decoded, Materialized
from deltaformat.errors import CorruptBlobError

_U32 = struct.Struct("<I")
_ESC = 255
MODE_RAW, MODE_PLANES, MODE_TABLE, MODE_TABLE_FLAGS = 0, 1, 2, 3

# Tuning (measured on the stand-in, see bench/codec_bench.py).
_HIST_SAMPLE = 1 << 18  # histogram from about this many elements (every s-th one): 2^20 gave 0.01 % smaller blobs, 10 % slower
_PLANES_IF_ESCAPES_ABOVE = 0.45  # estimated escape fraction above which planes win
_FLAGS_IF_TOP_ABOVE = 0.30  # top value share above which its bitmap beats its Huffman code
_TRY_ALL_BELOW = 4096  # small chunks: encode every mode and keep the smallest
_MAX_TABLE_NUMEL = 1 << 32
_MAX_BITMAP_DEPTH = 3  # m = 3 blobs nest (through their bitmaps) at most this deep
_LITTLE = sys.byteorder == "little"

_local = threading.local()


def _cctx_planes() -> zstandard.ZstdCompressor:
    c = getattr(_local, "planes", None)
    if c is None:
        c = _local.planes = zstandard.ZstdCompressor(level=1, write_content_size=True)
    return c


def _cctx_symbols() -> zstandard.ZstdCompressor:
    # Rank bytes are memoryless: a match is almost always a loss against Huffman
    # literals. A tiny hash table and the longest minimum match make zstd find few.
    c = getattr(_local, "symbols", None)
    if c is None:
        params = zstandard.ZstdCompressionParameters.from_level(1, hash_log=6, min_match=7, write_content_size=True)
        c = _local.symbols = zstandard.ZstdCompressor(compression_params=params)
    return c


def _dctx() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "dctx", None)
    if d is None:
        d = _local.dctx = zstandard.ZstdDecompressor()
    return d


def _le(bits: np.ndarray) -> np.ndarray:
    """``bits`` as a contiguous little-endian array (a no-op on the usual input)."""
    dt = bits.dtype
    if dt.byteorder == ">" or (dt.byteorder == "=" and not _LITTLE):
        bits = bits.astype(dt.newbyteorder("<"))
    return np.ascontiguousarray(bits)


def _put_stream(out: bytearray, payload: memoryview, cctx: zstandard.ZstdCompressor) -> None:
    frame = cctx.compress(payload)
    out += _U32.pack(len(frame))
    out += frame


def _put_planes(out: bytearray, values_le: np.ndarray) -> None:
    w = values_le.dtype.itemsize
    if values_le.size == 0:
        return
    cctx = _cctx_planes()
    if w == 1:
        _put_stream(out, values_le.data, cctx)
        return
    planes = values_le.view(np.uint8).reshape(-1, w)
    for k in range(w):
        _put_stream(out, np.ascontiguousarray(planes[:, k]).data, cctx)


class _Reader:
    """Bounds-checked cursor over a blob; every failure is a CorruptBlobError."""

    def __init__(self, data: bytes | memoryview, codec_id: str, numel: int) -> None:
        self.view = memoryview(data).cast("B")
        self.pos = 0
        self.cid = codec_id
        self.numel = numel

    def fail(self, msg: str) -> NoReturn:
        raise CorruptBlobError(f"{self.cid}: {msg}")

    def take(self, n: int, what: str) -> memoryview:
        end = self.pos + n
        if end > len(self.view):
            self.fail(f"truncated in {what} (needs {n} bytes at offset {self.pos}, blob has {len(self.view)})")
        chunk = self.view[self.pos : end]
        self.pos = end
        return chunk

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u32(self, what: str) -> int:
        value: int = _U32.unpack(self.take(4, what))[0]
        return value

    def stream(self, n: int, what: str) -> np.ndarray:
        """One zstd stream that must decompress to exactly ``n`` (>= 1) bytes."""
        length = self.u32(f"{what} length")
        frame = self.take(length, what)
        try:
            params = zstandard.get_frame_parameters(frame)
        except zstandard.ZstdError as exc:
            self.fail(f"{what}: not a zstd frame ({exc})")
        if params.content_size != n:
            if params.content_size >= zstandard.CONTENTSIZE_ERROR:
                self.fail(f"{what}: the zstd frame does not declare its size (expected {n} bytes)")
            self.fail(f"{what} declares {params.content_size} bytes, expected {n} (manifest says {self.numel} elements)")
        try:
            raw = _dctx().decompress(frame, max_output_size=n, allow_extra_data=False)
        except zstandard.ZstdError as exc:
            self.fail(f"{what}: {exc}")
        if len(raw) != n:
            self.fail(f"{what} decoded to {len(raw)} bytes, expected {n}")
        return np.frombuffer(raw, dtype=np.uint8)

    def planes(self, n: int, w: int, what: str) -> np.ndarray:
        if n == 0:
            return np.empty(0, dtype=f"<u{w}")
        if w == 1:
            return self.stream(n, f"{what} plane 0")
        out = np.empty((n, w), dtype=np.uint8)
        for k in range(w):
            out[:, k] = self.stream(n, f"{what} plane {k}")
        return out.reshape(-1).view(f"<u{w}")

    def end(self) -> None:
        if self.pos != len(self.view):
            self.fail(f"{len(self.view) - self.pos} trailing bytes after the last field")


class RankZstd(Codec):
    id = "rank-zstd-v1"

    # ---------------------------------------------------------------- encode
    def encode(self, bits: np.ndarray) -> bytes:
        bits = _le(np.asarray(bits).reshape(-1))
        if bits.dtype.kind != "u" or bits.dtype.itemsize not in UINT_FOR_ITEMSIZE:
            raise TypeError(f"{self.id}: expects unsigned integer element bits, got {bits.dtype}")
        return self._encode(bits, depth=0)

    def _encode(self, bits: np.ndarray, depth: int) -> bytes:
        n = bits.size
        if n == 0:
            return bytes([MODE_RAW])
        if n >= _MAX_TABLE_NUMEL:  # counts are u32
            return self._encode_planes(bits)
        flags_ok = depth < _MAX_BITMAP_DEPTH
        if n < _TRY_ALL_BELOW:
            table, _ = self._plan(bits, sample=False)
            assert table is not None  # only a sampled plan can prefer byte planes
            cands = [self._encode_raw(bits), self._encode_planes(bits), self._encode_table(bits, table, False, depth)]
            if flags_ok:
                cands.append(self._encode_table(bits, table, True, depth))
            return min(cands, key=len)
        table, flags = self._plan(bits, sample=True)
        if table is None:
            return self._encode_planes(bits)
        return self._encode_table(bits, table, flags and flags_ok, depth)

    @staticmethod
    def _heads(bits: np.ndarray) -> tuple[np.ndarray, int]:
        """The top 16 bits of each element (all bits of 1- and 2-byte elements), and the shift."""
        w = bits.dtype.itemsize
        if w <= 2:
            return bits, 0
        if w == 4 and _LITTLE:  # the high half-word of element i is u16 number 2i+1
            return bits.view(np.uint16)[1::2], 16
        shift = 8 * w - 16
        return (bits >> bits.dtype.type(shift)).astype(np.uint16), shift

    def _plan(self, bits: np.ndarray, sample: bool) -> tuple[np.ndarray | None, bool]:
        """Pick the table (as element values, most frequent first) and whether to flag its top value.

        The table holds the most frequent heads with their low bits 0, from a histogram
        of the heads of every element (or of about _HIST_SAMPLE of them when ``sample``).
        When sampling, returns ``(None, False)`` if byte planes are expected to win.
        """
        w = bits.dtype.itemsize
        heads, shift = self._heads(bits)
        step = max(1, bits.size // _HIST_SAMPLE) if sample else 1
        hs = heads[::step]
        hist = np.bincount(hs, minlength=1 << min(16, 8 * w))
        k = min(_ESC, int(np.count_nonzero(hist)))
        top = np.argsort(-hist, kind="stable")[:k]  # most frequent first, ties: smaller head first
        dtype = bits.dtype
        table = top.astype(dtype) << dtype.type(shift) if shift else top.astype(dtype)
        covered = int(hist[top].sum())
        if shift:  # an element whose low bits are not 0 is an escape even if its head is in the table
            covered -= int(np.count_nonzero(bits[::step] & dtype.type((1 << shift) - 1)))
        if sample and 1.0 - covered / hs.size > _PLANES_IF_ESCAPES_ABOVE:
            return None, False
        return table, bool(hist[top[0]] / hs.size > _FLAGS_IF_TOP_ABOVE)

    def _encode_raw(self, bits: np.ndarray) -> bytes:
        return bytes([MODE_RAW]) + bits.tobytes()

    def _encode_planes(self, bits: np.ndarray) -> bytes:
        out = bytearray([MODE_PLANES])
        _put_planes(out, bits)
        return bytes(out)

    def _symbols(self, bits: np.ndarray, table: np.ndarray) -> np.ndarray:
        """Rank byte per element: its index in ``table``, or 255 (escape)."""
        w = bits.dtype.itemsize
        heads, shift = self._heads(bits)
        lut = np.full(1 << min(16, 8 * w), _ESC, dtype=np.uint8)
        lut[(table >> bits.dtype.type(shift)).astype(np.intp)] = np.arange(table.size, dtype=np.uint8)
        sym = np.take(lut, heads)
        if w == 4 and _LITTLE:
            np.putmask(sym, bits.view(np.uint16)[0::2] != 0, _ESC)
        elif shift:
            np.putmask(sym, (bits & bits.dtype.type((1 << shift) - 1)) != 0, _ESC)
        return sym

    def _encode_table(self, bits: np.ndarray, table: np.ndarray, flags: bool, depth: int = 0) -> bytes:
        sym = self._symbols(bits, table)
        esc = np.flatnonzero(sym == _ESC)
        out = bytearray([MODE_TABLE_FLAGS if flags else MODE_TABLE])
        out += _U32.pack(bits.size)
        out.append(table.size)
        out += table.tobytes()
        out += _U32.pack(esc.size)
        if flags:
            rest = sym != 0
            m = int(np.count_nonzero(rest))
            out += _U32.pack(m)
            bitmap = self._encode(np.packbits(rest, bitorder="little"), depth + 1)
            out += _U32.pack(len(bitmap))
            out += bitmap
            if m:
                _put_stream(out, np.compress(rest, sym).data, _cctx_symbols())
        else:
            _put_stream(out, sym.data, _cctx_symbols())
        if esc.size:
            _put_planes(out, bits[esc])
        return bytes(out)

    # ---------------------------------------------------------------- decode
    def decode(self, data: bytes, numel: int, itemsize: int) -> np.ndarray:
        return self.decode_blocks(data, numel, itemsize).array()

    def decode_blocks(self, data: bytes, numel: int, itemsize: int) -> Decoded:
        if itemsize not in UINT_FOR_ITEMSIZE:
            raise CorruptBlobError(f"{self.id}: unsupported element width {itemsize}")
        if numel < 0:
            raise CorruptBlobError(f"{self.id}: negative element count {numel}")
        return self._decode(data, numel, itemsize, depth=0)

    def _decode(self, data: bytes | memoryview, numel: int, itemsize: int, depth: int) -> Decoded:
        r = _Reader(data, self.id if depth == 0 else f"{self.id} (bitmap level {depth})", numel)
        mode = r.u8("mode byte")
        native = UINT_FOR_ITEMSIZE[itemsize]
        if mode == MODE_RAW:
            if len(r.view) - 1 != numel * itemsize:
                r.fail(f"raw payload is {len(r.view) - 1} bytes, manifest says {numel} elements of {itemsize} bytes")
            raw = r.take(numel * itemsize, "raw elements")
            r.end()
            return Materialized(np.frombuffer(raw, dtype=f"<u{itemsize}").astype(native))
        if mode == MODE_PLANES:
            out = r.planes(numel, itemsize, "planes")
            r.end()
            return Materialized(out.astype(native, copy=False))
        if mode in (MODE_TABLE, MODE_TABLE_FLAGS):
            if not 0 < numel < _MAX_TABLE_NUMEL:
                r.fail(f"mode {mode} cannot hold {numel} elements")
            if mode == MODE_TABLE_FLAGS and depth >= _MAX_BITMAP_DEPTH:
                r.fail(f"bitmaps nested deeper than {_MAX_BITMAP_DEPTH} levels")
            declared = r.u32("element count")
            if declared != numel:
                r.fail(f"blob holds {declared} elements, manifest says {numel}")
            return self._decode_table(r, mode, numel, itemsize, depth)
        r.fail(f"unknown mode {mode}")

    def _decode_table(self, r: _Reader, mode: int, numel: int, w: int, depth: int) -> Decoded:
        k = r.u8("table size")
        if k == 0:
            r.fail("empty table")
        table = np.frombuffer(r.take(k * w, "table"), dtype=f"<u{w}")
        esc_count = r.u32("escape count")
        if esc_count > numel:
            r.fail(f"{esc_count} escapes, manifest says {numel} elements")
        lut = np.zeros(256, dtype=UINT_FOR_ITEMSIZE[w])
        lut[:k] = table
        if mode == MODE_TABLE:
            elements = self._symbols_and_escapes(r, lut, k, numel, esc_count, w)
            r.end()
            return elements  # looked up block by block, when asked
        m = r.u32("count of elements other than the top value")
        if not esc_count <= m <= numel:
            r.fail(f"{m} elements other than the top value, {esc_count} escapes, {numel} elements")
        nbytes = (numel + 7) // 8
        blob = r.take(r.u32("bitmap length"), "bitmap")
        bitmap = self._decode(blob, nbytes, 1, depth + 1).array()
        if numel % 8 and bitmap[-1] >> (numel % 8):
            r.fail("bitmap padding bits are not 0")
        rest = np.unpackbits(bitmap, count=numel, bitorder="little").view(bool)
        ones = int(np.count_nonzero(rest))
        if ones != m:
            r.fail(f"bitmap has {ones} bits set, header says {m}")
        out = np.full(numel, table[0], dtype=UINT_FOR_ITEMSIZE[w])
        if m:  # (m = 0 means no symbols and, as esc_count <= m, no escapes)
            out[np.flatnonzero(rest)] = self._symbols_and_escapes(r, lut, k, m, esc_count, w).array()
        r.end()
        return Materialized(out)

    @staticmethod
    def _symbols_and_escapes(r: _Reader, lut: np.ndarray, k: int, n: int, esc_count: int, w: int) -> _TableLookup:
        """A stream of ``n`` symbols, then the escaped elements: element i is ``lut[s_i]``, or the next escape where s_i >= k."""
        sym = r.stream(n, "symbols")
        esc_pos = np.flatnonzero(sym >= k)
        if esc_pos.size != esc_count:
            r.fail(f"symbols hold {esc_pos.size} escapes, header says {esc_count}")
        return _TableLookup(lut, sym, esc_pos, r.planes(esc_count, w, "escapes"))


_PAIR_LUT_FROM = 1 << 16  # below this many symbols, building the pair table costs more than it saves


class _TableLookup(Decoded):
    """Elements ``lut[sym]``, then ``escapes`` put at ``esc_pos`` (ascending), block by block.

    Lookups go two symbols at a time where that pays: numpy's gather costs about 1 ns
    per index here whatever the element size (it converts every index to intp), so
    reading symbols in pairs (as uint16) from a 65,536-entry table of value pairs halves
    the work (4.2 -> 1.6 ms for 2^22 symbols); the pair table (512 KiB for fp32) stays in
    a core's L2 cache.
    """

    def __init__(self, lut: np.ndarray, sym: np.ndarray, esc_pos: np.ndarray, escapes: np.ndarray):
        super().__init__(sym.size, lut.dtype)
        self.lut, self.sym, self.esc_pos, self.escapes = lut, sym, esc_pos, escapes
        w = lut.dtype.itemsize
        self.pair_lut = None
        if sym.size >= _PAIR_LUT_FROM and w <= 4 and _LITTLE:
            # entry (hi << 8 | lo), the uint16 of the symbol pair (lo, hi), holds lut[lo] then lut[hi]
            wide = lut.astype(np.dtype(f"<u{2 * w}"))
            self.pair_lut = ((wide[:, None] << wide.dtype.type(8 * w)) | wide[None, :]).reshape(-1)

    def array(self) -> np.ndarray:
        if self.pair_lut is None or self.numel % 2:
            return super().array()
        out = np.take(self.pair_lut, self.sym.view(np.uint16)).view(self.dtype)  # faster than into a new buffer
        self._put_escapes(0, out)
        return out

    def fill(self, start: int, out: np.ndarray) -> None:
        n = out.size
        sym = self.sym[start : start + n]
        # mode="clip": every index is in range, and with out= the default mode buffers a copy
        if self.pair_lut is not None and start % 2 == 0:
            even = n & ~1
            np.take(self.pair_lut, sym[:even].view(np.uint16), out=out[:even].view(self.pair_lut.dtype), mode="clip")
            if even < n:
                out[-1] = self.lut[sym[-1]]
        else:
            np.take(self.lut, sym, out=out, mode="clip")
        self._put_escapes(start, out)

    def _put_escapes(self, start: int, out: np.ndarray) -> None:
        if self.esc_pos.size:
            lo, hi = np.searchsorted(self.esc_pos, (start, start + out.size))
            if hi > lo:
                out[self.esc_pos[lo:hi] - start] = self.escapes[lo:hi]
