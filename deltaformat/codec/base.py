"""The codec interface shared by every codec module."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

UINT_FOR_ITEMSIZE = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


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
