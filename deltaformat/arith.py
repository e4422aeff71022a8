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

from deltaformat.codec.base import UINT_FOR_ITEMSIZE, Decoded, Materialized

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


# CPU arithmetic runs block by block: one block's inputs, fp32 accumulator and output
# stay in cache instead of streaming chunk-sized fp32 temporaries (16 MiB each for a
# 2^22-element chunk) through memory, which two workers then contend for. Measured on
# a 2^22-element bf16 chunk: 1.7 ms per combine instead of 2.3 ms on one thread, and
# 1.8 ms instead of 2.6-6.3 ms with two workers busy. The operations on every element
# are the same as unblocked (elementwise only; blocks are a multiple of every SIMD
# width, so each element takes the same vector or scalar path).
BLOCK = 1 << 18


def combine(base_bits: np.ndarray, base_dtype: str, deltas: Sequence[tuple[float, np.ndarray | Decoded]], out_dtype: str, device: str = "cpu") -> np.ndarray:
    """Return the raw bits of ``out_dtype(fp32(base) + Σ alpha * delta)``.

    ``deltas`` holds (alpha, Δ) pairs covering the same elements; each Δ is fp32 bits,
    as a uint32 array or as a ``Decoded`` chunk, which is then produced block by block
    into a cache-sized buffer (two threads combining a 2^22-element bf16 chunk: 5.9 -> 3.9 ms
    a chunk, decode included, against decoding whole chunks first).
    """
    torch = _torch()
    if device != "cpu":
        acc = bits_to_torch(base_bits, base_dtype).to(device=device, dtype=torch_dtype("F32"), copy=True)
        for alpha, d in deltas:
            d = d if isinstance(d, np.ndarray) else d.array()
            acc.add_(bits_to_torch(d, "F32").to(device), alpha=alpha)
        return torch_to_bits(acc.to(torch_dtype(out_dtype)).cpu())
    n = base_bits.size
    out = np.empty(n, dtype=UINT_FOR_ITEMSIZE[torch_dtype(out_dtype).itemsize])
    base_t, out_t = bits_to_torch(base_bits, base_dtype), bits_to_torch(out, out_dtype)
    blocks = [_BlockSource(d, min(n, BLOCK)) for _, d in deltas]
    acc = torch.empty(min(n, BLOCK), dtype=torch.float32)
    for s in range(0, n, BLOCK):
        e = min(n, s + BLOCK)
        a = acc[: e - s]
        a.copy_(base_t[s:e])  # what .to(float32) does: exact widening
        _add_and_narrow(a, [(alpha, b.block(s, e)) for (alpha, _), b in zip(deltas, blocks)], out_t[s:e])
    return out


class _BlockSource:
    """Blocks of one Δ as fp32 tensors: views of an array, or a ``Decoded`` chunk filled into one reused buffer."""

    def __init__(self, d: np.ndarray | Decoded, block: int):
        self.d = d = d.array() if isinstance(d, Materialized) else d  # decoded whole already: use views of it
        if isinstance(d, np.ndarray):
            self.t = bits_to_torch(d, "F32")
        else:
            self.buf = np.empty(block, dtype=np.uint32)
            self.t = bits_to_torch(self.buf, "F32")

    def block(self, s: int, e: int) -> "torch.Tensor":
        if isinstance(self.d, np.ndarray):
            return self.t[s:e]
        self.d.fill(s, self.buf[: e - s])
        return self.t[: e - s]


def _add_and_narrow(acc: "torch.Tensor", terms: list, out: "torch.Tensor") -> None:
    """The block step of ``combine``: ``acc`` (fp32 base) += Σ alpha * Δ, rounded into ``out``."""
    for alpha, d in terms:
        acc.add_(d, alpha=alpha)
    out.copy_(acc)  # what .to(out_dtype) does: round to nearest even


def difference_checked(base_bits: np.ndarray, base_dtype: str, post_bits: np.ndarray, post_dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """``difference`` and the indices where ``combine(base, [(1, Δ)], post_dtype)`` is not the post.

    Block by block (see BLOCK), so base and post are read from memory once; the check
    runs ``combine``'s own block step, so what extract records as exact is what apply computes.
    """
    torch = _torch()
    n = base_bits.size
    d = np.empty(n, dtype=np.uint32)
    check = np.empty(min(n, BLOCK), dtype=post_bits.dtype)
    base_t, post_t, d_t = bits_to_torch(base_bits, base_dtype), bits_to_torch(post_bits, post_dtype), bits_to_torch(d, "F32")
    check_t = bits_to_torch(check, post_dtype)
    pf, bf = torch.empty(min(n, BLOCK), dtype=torch.float32), torch.empty(min(n, BLOCK), dtype=torch.float32)
    bad = []
    for s in range(0, n, BLOCK):
        e = min(n, s + BLOCK)
        p, b = pf[: e - s], bf[: e - s]
        p.copy_(post_t[s:e])
        b.copy_(base_t[s:e])  # fp32(base), widened as combine widens it
        torch.sub(p, b, out=d_t[s:e])
        _add_and_narrow(b, [(1.0, d_t[s:e])], check_t[: e - s])
        wrong = np.flatnonzero(check[: e - s] != post_bits[s:e])
        if wrong.size:
            bad.append(wrong + s)
    return d, (np.concatenate(bad) if bad else np.empty(0, dtype=np.int64))


def difference(base_bits: np.ndarray, base_dtype: str, post_bits: np.ndarray, post_dtype: str) -> np.ndarray:
    """fp32(post) − fp32(base), as fp32 bits (uint32)."""
    d = bits_to_torch(post_bits, post_dtype).float() - bits_to_torch(base_bits, base_dtype).float()
    return torch_to_bits(d)


def cast(bits: np.ndarray, from_dtype: str, to_dtype: str) -> np.ndarray:
    """Raw bits of the elements converted from one float dtype to another (round to nearest even)."""
    return torch_to_bits(bits_to_torch(bits, from_dtype).to(torch_dtype(to_dtype)))
