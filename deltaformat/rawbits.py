"""The unsigned integers that hold a safetensors dtype's raw bits (spec §5), as numpy types.

Apart from deltaformat.dtypes, whose tables the readers of manifests use without numpy.
"""

from __future__ import annotations

import numpy as np

from deltaformat.dtypes import ITEMSIZE

# The unsigned integer type holding one element's raw bits, by element width in bytes.
UINT_FOR_ITEMSIZE: dict[int, type[np.unsignedinteger]] = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def uint_dtype(dtype: str) -> np.dtype:
    """The numpy dtype of a safetensors dtype's raw bits (``BF16`` -> ``uint16``)."""
    return np.dtype(UINT_FOR_ITEMSIZE[ITEMSIZE[dtype]])
