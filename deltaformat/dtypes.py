"""safetensors dtype names, their widths and the unsigned integers that hold their raw bits.

The format's tables (spec §3: dtype names; §5: codecs see elements as unsigned
little-endian integers of the dtype's width). No torch here: the client, the codecs and
the registry import this.
"""

from __future__ import annotations

import numpy as np

ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}
# The unsigned integer type holding one element's raw bits, by element width in bytes.
UINT_FOR_ITEMSIZE: dict[int, type[np.unsignedinteger]] = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
# dtypes a Δ can be taken on: fp32 arithmetic represents their differences well.
DELTA_DTYPES = frozenset({"F16", "BF16", "F32"})


def uint_dtype(dtype: str) -> np.dtype:
    """The numpy dtype of a safetensors dtype's raw bits (``BF16`` -> ``uint16``)."""
    return np.dtype(UINT_FOR_ITEMSIZE[ITEMSIZE[dtype]])
