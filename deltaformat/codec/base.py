"""The codec interface shared by every codec module."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from deltaformat.dtypes import UINT_FOR_ITEMSIZE  # noqa: F401 - the format's table; codecs import it from here


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
