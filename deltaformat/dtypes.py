"""safetensors dtype names, their widths, and their torch equivalents."""

from __future__ import annotations

import numpy as np
import torch

from deltaformat.codec.base import UINT_FOR_ITEMSIZE

ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}
# dtypes a Δ can be taken on: fp32 arithmetic represents their differences well.
DELTA_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}
_SIGNED_FOR_ITEMSIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def uint_dtype(dtype: str) -> np.dtype:
    return np.dtype(UINT_FOR_ITEMSIZE[ITEMSIZE[dtype]])


def bits_to_torch(bits: np.ndarray, dtype: str) -> torch.Tensor:
    """View raw element bits (numpy unsigned ints) as a torch tensor of ``dtype``, without copying."""
    signed = bits.view(np.dtype(f"i{bits.dtype.itemsize}")) if bits.dtype.itemsize > 1 else bits
    return torch.from_numpy(signed).view(DELTA_DTYPES[dtype])


def torch_to_bits(t: torch.Tensor) -> np.ndarray:
    """Raw bits of a CPU tensor as numpy unsigned ints (no copy)."""
    signed = t.view(_SIGNED_FOR_ITEMSIZE[t.element_size()]).numpy()
    return signed.view(UINT_FOR_ITEMSIZE[t.element_size()])


def dtype_name(t: torch.dtype) -> str:
    for name, td in DELTA_DTYPES.items():
        if td == t:
            return name
    raise ValueError(f"unsupported torch dtype {t}")
