"""safetensors dtype names and their widths (no torch here: the client and registry import this)."""

from __future__ import annotations

import numpy as np

from deltaformat.codec.base import UINT_FOR_ITEMSIZE

ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}
# dtypes a Δ can be taken on: fp32 arithmetic represents their differences well.
DELTA_DTYPES = frozenset({"F16", "BF16", "F32"})


def uint_dtype(dtype: str) -> np.dtype:
    return np.dtype(UINT_FOR_ITEMSIZE[ITEMSIZE[dtype]])
