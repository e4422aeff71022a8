"""The codec interface shared by every codec module."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from deltaformat.rawbits import UINT_FOR_ITEMSIZE as UINT_FOR_ITEMSIZE  # the format's table; codecs import it from here


class Decoded:
    """One decoded chunk, validated, handed out block by block into the caller's buffers.

    Why: apply adds Δ to the base in cache-sized blocks (``arith.BLOCK``). A codec that
    can produce its elements per block keeps Δ in cache instead of writing and then
    re-reading a chunk-sized fp32 array. Every check that can fail has run before a
    ``Decoded`` exists, so ``fill`` cannot fail on a bad blob.
    """

    def __init__(self, numel: int, dtype: np.dtype):
        self.numel = numel
        self.dtype = np.dtype(dtype)

    def fill(self, start: int, out: np.ndarray) -> None:
        """Write elements ``[start, start + out.size)`` into ``out`` (1-D, of ``self.dtype``)."""
        raise NotImplementedError

    def array(self) -> np.ndarray:
        """All elements as one new array."""
        out = np.empty(self.numel, dtype=self.dtype)
        self.fill(0, out)
        return out


class Materialized(Decoded):
    """A chunk decoded all at once: blocks are slices of it."""

    def __init__(self, values: np.ndarray):
        super().__init__(values.size, values.dtype)
        self.values = values

    def fill(self, start: int, out: np.ndarray) -> None:
        out[...] = self.values[start : start + out.size]

    def array(self) -> np.ndarray:
        return self.values


class Codec(ABC):
    """Encodes one chunk (a 1-D array of raw element bits) into bytes and back.

    ``encode`` must be deterministic. ``decode`` must never produce more than
    ``numel`` elements (the manifest bounds every decoded size: no decompression
    bombs) and must raise ``deltaformat.errors.CorruptBlobError`` on malformed input.
    Both release the GIL in their heavy parts (zstd, numpy) so chunks run in parallel.
    """

    id: ClassVar[str]
    lossy: ClassVar[bool] = False  # True: blobs approximate the exact Δ (format v2, spec/format-v2.md §5)

    @abstractmethod
    def encode(self, bits: np.ndarray) -> bytes:
        """Encode ``bits`` (1-D, unsigned integer dtype of the element width)."""

    @abstractmethod
    def decode(self, data: bytes, numel: int, itemsize: int) -> np.ndarray:
        """Decode to a 1-D array of ``numel`` unsigned integers of ``itemsize`` bytes."""

    def decode_blocks(self, data: bytes, numel: int, itemsize: int) -> Decoded:
        """Check and decode ``data`` as ``decode`` does, handing the elements out block by block.

        The default decodes everything at once; a codec overrides it where producing
        elements per block is cheaper than holding them all.
        """
        return Materialized(self.decode(data, numel, itemsize))


class LossyCodec(Codec):
    """A codec whose blobs approximate an fp32 Δ chunk (format v2): decoding gives fp32 bits
    (so apply's chunk engine treats it like any other Δ codec), encoding takes the exact Δ
    as float32 values plus the chunk's place in its tensor, and settings of its own.

    Every blob carries what its decoder needs (the settings in the manifest are
    informative). ``encode_delta`` refuses a Δ with NaN or ±∞: no approximation of them
    is meaningful, and the exact codec stores them (with a patch) instead.
    """

    lossy: ClassVar[bool] = True
    defaults: ClassVar[dict[str, int | float]] = {}

    @abstractmethod
    def encode_delta(self, delta: np.ndarray, cols: int, lead: int, **params: int | float) -> bytes:
        """Encode ``delta`` (1-D float32): elements of a tensor whose rows have ``cols`` elements,
        the first of them at column ``lead`` of its row."""

    def encode(self, bits: np.ndarray) -> bytes:
        """The ``Codec`` interface: the chunk's bits as one row, default settings."""
        d = np.asarray(bits).reshape(-1).view(np.float32)
        return self.encode_delta(d, max(1, d.size), 0, **self.defaults)

    def settings(self, **params: int | float) -> dict[str, int | float]:
        """``params`` over the defaults; an unknown name is an error naming it."""
        unknown = set(params) - set(self.defaults)
        if unknown:
            raise ValueError(f"{self.id}: unknown setting {sorted(unknown)[0]!r} (known: {', '.join(sorted(self.defaults))})")
        return {**self.defaults, **params}


def check_finite(codec_id: str, delta: np.ndarray) -> None:
    """Refuse NaN and ±∞ in a Δ a lossy codec is asked to approximate."""
    bad = int(np.count_nonzero(~np.isfinite(delta)))
    if bad:
        raise ValueError(f"{codec_id}: Δ has {bad} NaN or infinite element(s); a lossy codec cannot approximate them "
                         "(extract without --lossy stores them exactly)")
