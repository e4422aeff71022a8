"""Chunking (spec §3.4 and §4.1): how a tensor or stream is cut into ``chunk_elements`` pieces.

Digests, blobs and the work of extract, apply and verify all follow the same cut, so it is
defined once here, at the format's level, beside nothing heavier than the chunk size.
"""

from __future__ import annotations

from deltaformat.manifest import CHUNK_ELEMENTS


def chunk_ranges(numel: int, size: int = CHUNK_ELEMENTS) -> list[tuple[int, int]]:
    """(start, count) of each chunk; a 0-element array has one empty chunk (for digests)."""
    if numel == 0:
        return [(0, 0)]
    return [(s, min(size, numel - s)) for s in range(0, numel, size)]


__all__ = ["CHUNK_ELEMENTS", "chunk_ranges"]
