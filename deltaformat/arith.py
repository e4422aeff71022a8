"""The one arithmetic kernel: Θ = base + Σ αᵢ Δᵢ in fp32, cast to the output dtype.

extract checks exactness with this same function, so what it records as exact is
exactly what apply computes. Elements travel as raw bits (numpy unsigned ints) and
are viewed as torch tensors only here; torch is imported on first use, so the registry
client and server, which import the format library but do no arithmetic, start without it.
"""

from __future__ import annotations

from collections.abc import Sequence

from functools import cache
from typing import TYPE_CHECKING

import numpy as np

from deltaformat.codec.base import UINT_FOR_ITEMSIZE

if TYPE_CHECKING:
    import torch


@cache
def _torch():
    import torch

    return torch


@cache
def torch_dtype(name: str) -> "torch.dtype":
    torch = _torch()
    return {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}[name]


def bits_to_torch(bits: np.ndarray, dtype: str) -> "torch.Tensor":
    """View raw element bits (numpy unsigned ints) as a torch tensor of ``dtype``, without copying."""
    signed = bits.view(np.dtype(f"i{bits.dtype.itemsize}")) if bits.dtype.itemsize > 1 else bits
    return _torch().from_numpy(signed).view(torch_dtype(dtype))


def torch_to_bits(t: "torch.Tensor") -> np.ndarray:
    """Raw bits of a CPU tensor as numpy unsigned ints (no copy)."""
    torch = _torch()
    signed_for_itemsize = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    signed = t.view(signed_for_itemsize[t.element_size()]).numpy()
    return signed.view(UINT_FOR_ITEMSIZE[t.element_size()])


def combine(base_bits: np.ndarray, base_dtype: str, deltas: Sequence[tuple[float, np.ndarray]], out_dtype: str, device: str = "cpu") -> np.ndarray:
    """Return the raw bits of ``out_dtype(fp32(base) + Σ alpha * delta)``.

    ``deltas`` holds (alpha, fp32 bits as uint32) pairs covering the same elements.
    """
    acc = bits_to_torch(base_bits, base_dtype).to(device=device, dtype=torch_dtype("F32"), copy=True)
    for alpha, d in deltas:
        acc.add_(bits_to_torch(d, "F32").to(device), alpha=alpha)
    out = acc.to(torch_dtype(out_dtype))
    return torch_to_bits(out.cpu() if out.device.type != "cpu" else out)


def difference(base_bits: np.ndarray, base_dtype: str, post_bits: np.ndarray, post_dtype: str) -> np.ndarray:
    """fp32(post) − fp32(base), as fp32 bits (uint32)."""
    d = bits_to_torch(post_bits, post_dtype).float() - bits_to_torch(base_bits, base_dtype).float()
    return torch_to_bits(d)


def cast(bits: np.ndarray, from_dtype: str, to_dtype: str) -> np.ndarray:
    """Raw bits of the elements converted from one float dtype to another (round to nearest even)."""
    return torch_to_bits(bits_to_torch(bits, from_dtype).to(torch_dtype(to_dtype)))
