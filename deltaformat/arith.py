"""The one arithmetic kernel: Θ = base + Σ αᵢ Δᵢ in fp32, cast to the output dtype.

extract checks exactness with this same function, so what it records as exact is
exactly what apply computes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from deltaformat.dtypes import DELTA_DTYPES, bits_to_torch, torch_to_bits


def combine(base_bits: np.ndarray, base_dtype: str, deltas: Sequence[tuple[float, np.ndarray]], out_dtype: str, device: str = "cpu") -> np.ndarray:
    """Return the raw bits of ``out_dtype(fp32(base) + Σ alpha * delta)``.

    ``deltas`` holds (alpha, fp32 bits as uint32) pairs covering the same elements.
    """
    acc = bits_to_torch(base_bits, base_dtype).to(device=device, dtype=torch.float32, copy=True)
    for alpha, d in deltas:
        acc.add_(bits_to_torch(d, "F32").to(device), alpha=alpha)
    out = acc.to(DELTA_DTYPES[out_dtype])
    return torch_to_bits(out.cpu() if out.device.type != "cpu" else out)


def difference(base_bits: np.ndarray, base_dtype: str, post_bits: np.ndarray, post_dtype: str) -> np.ndarray:
    """fp32(post) − fp32(base), as fp32 bits (uint32)."""
    d = bits_to_torch(post_bits, post_dtype).float() - bits_to_torch(base_bits, base_dtype).float()
    return torch_to_bits(d)
