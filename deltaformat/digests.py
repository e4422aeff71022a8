"""Digests: blobs, tensors (chunked, so chunks hash in parallel) and model fingerprints."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TypeAlias, cast

if TYPE_CHECKING:
    import numpy as np
    from typing_extensions import Buffer

BytesLike: TypeAlias = "bytes | memoryview | np.ndarray[Any, Any]"  # what hashlib reads (a numpy array: its raw bytes)

PREFIX = "sha256:"


def blob_digest(data: BytesLike) -> str:
    """Digest of a blob: sha256 of its bytes, as ``sha256:<hex>``."""
    return PREFIX + hashlib.sha256(cast("Buffer", data)).hexdigest()


def chunk_hash(data: BytesLike) -> bytes:
    """Raw sha256 of one chunk of a tensor's bytes (one step of a tensor digest)."""
    return hashlib.sha256(cast("Buffer", data)).digest()  # numpy's stubs do not say it is one


def tensor_digest(chunk_hashes: Iterable[bytes]) -> str:
    """Tensor digest: sha256 over the concatenated raw sha256 of each chunk.

    Chunks are ``chunk_elements`` elements of the tensor's raw little-endian bytes in
    row-major order (the last may be shorter); a tensor of 0 elements has one empty chunk.
    """
    h = hashlib.sha256()
    for c in chunk_hashes:
        h.update(c)
    return PREFIX + h.hexdigest()


def fingerprint(tensors: Iterable[tuple[str, list[int], str, str]]) -> str:
    """Model fingerprint from (name, shape, dtype, digest) of every tensor.

    sha256 over one JSON line per tensor, sorted by name: ``["name",[shape],"DTYPE","sha256:..."]\\n``.
    """
    h = hashlib.sha256()
    for name, shape, dtype, digest in sorted(tensors):
        h.update(json.dumps([name, list(shape), dtype, digest], separators=(",", ":")).encode() + b"\n")
    return PREFIX + h.hexdigest()


def hex_of(digest: str) -> str:
    return digest[len(PREFIX):]
