"""The one arithmetic kernel: Θ = cast_out(fp32(base) + Σ αᵢ·Δᵢ), with every bit fixed.

extract checks exactness with this same code, so what it records as exact is exactly
what apply computes. Elements travel as raw bits (numpy unsigned ints). On the CPU the
arithmetic is numpy only and gives, bit for bit, what the reference computed with torch
2.x on x86 before (spec §7 step 2): each step ``acc ← fma(αᵢ, Δᵢ, acc)`` rounded once
to fp32 (α itself rounded to fp32 first), narrowing by round to nearest even, and the
NaN bits torch produced (see ``_replay_nans``). ``device="cuda"`` and other torch
devices still run torch, imported only there.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from deltaformat._parallel import scratch
from deltaformat.codec.base import Decoded, Materialized
from deltaformat.errors import ParamDeltaError
from deltaformat.rawbits import UINT_FOR_ITEMSIZE, uint_dtype

if TYPE_CHECKING:
    import torch

# CPU arithmetic runs block by block: one block's inputs, fp32 accumulator and output
# stay in cache instead of streaming chunk-sized fp32 temporaries through memory, which
# two workers then contend for. Measured on a 2^22-element bf16 chunk: 2^18 elements a
# block cost 3.5 ms a chunk, 2^16 4.2 ms and 2^14 6.8 ms (numpy's per-call overhead
# grows with the number of blocks faster than the smaller blocks' cache hits save).
# A multiple of 8: the F16 quirk below concerns the last n mod 8 elements of a call.
BLOCK = 1 << 18
# The fused step works in float64 (8 bytes an element, several arrays) in pieces of a block. Measured
# per 2^22-element chunk at alpha 0.7 (best of 3 rounds, 1 / 2 threads): 2^15 elements 13.3 / 14.8 ms,
# 2^17 12.8 / 9.4 ms: the numpy calls of small pieces hold the GIL often enough that a second thread
# gained nothing, while 2^17 (1 MiB a float64 array) still mostly stays in cache.
_FUSED_PIECE = 1 << 17
_BELOW_F32 = np.int64((1 << 29) - 1)  # the float64 mantissa bits an fp32 (normal) value does not have
_F32_MIDPOINT = np.int64(1 << 28)  # those bits on a value halfway between two fp32 values
_F64_EXPONENT = np.int64(0x7FF << 52)  # a float64's exponent field, in place
_F32_SUBNORMAL_FIELD = np.int64((1023 - 126) << 52)  # float64 exponent fields below this are fp32-subnormal (or zero)

_F32_QUIET = np.uint32(0x0040_0000)
# What x86 (and so torch's CPU kernels) gives for an invalid operation (∞ − ∞, 0·∞):
# written explicitly, so numpy on another architecture gives the same bits.
_F32_DEFAULT_NAN = np.uint32(0xFFC0_0000)
_F32_MAX = float(np.finfo(np.float32).max)
# Overflow to ∞ and ∞ − ∞ are results here, not mistakes: numpy is not to warn about them.
_ieee_quietly = np.errstate(over="ignore", invalid="ignore")


@_ieee_quietly
def combine(base_bits: np.ndarray, base_dtype: str, deltas: Sequence[tuple[float, np.ndarray | Decoded]], out_dtype: str,
            device: str = "cpu", out: np.ndarray | None = None) -> np.ndarray:
    """Return the raw bits of ``out_dtype(fp32(base) + Σ alpha * delta)``.

    ``deltas`` holds (alpha, Δ) pairs covering the same elements; each Δ is fp32 bits,
    as a uint32 array or as a ``Decoded`` chunk, which is then produced block by block
    into a cache-sized buffer instead of being decoded whole first. ``out`` (CPU only):
    where the result goes instead of a new array; it may be ``base_bits`` itself, of an
    equally wide dtype (each block of the base is read before its result is written).
    """
    if device != "cpu":
        return _combine_torch(base_bits, base_dtype, deltas, out_dtype, device)
    n = base_bits.size
    out = np.empty(n, dtype=uint_dtype(out_dtype)) if out is None else out
    alphas = [fp32_alpha(alpha) for alpha, _ in deltas]
    sources = [_BlockSource(d, i, min(n, BLOCK)) for i, (_, d) in enumerate(deltas)]
    acc = scratch("arith.acc", 4 * min(n, BLOCK)).view(np.float32)
    for s in range(0, n, BLOCK):
        e = min(n, s + BLOCK)
        a = acc[: e - s]
        _widen(base_bits[s:e], base_dtype, a)
        terms = [(alpha, src.block(s, e)) for alpha, src in zip(alphas, sources)]
        _add_and_narrow(a, (base_bits[s:e], base_dtype), terms, out[s:e], out_dtype)
    return out


def fp32_alpha(alpha: float) -> np.float32:
    """α as the fp32 the arithmetic uses; out of fp32's range is refused (as torch refused it)."""
    if np.isfinite(alpha) and abs(alpha) > _F32_MAX:
        raise ValueError(f"alpha {alpha!r} is outside float32's range (|alpha| <= {_F32_MAX:.7g})")
    alpha32: np.float32 = np.float32(alpha)
    return alpha32


class _BlockSource:
    """Blocks of one Δ as fp32 arrays: views of an array, or a ``Decoded`` chunk filled into one reused buffer."""

    def __init__(self, d: np.ndarray | Decoded, index: int, block: int):
        self.d = d = d.array() if isinstance(d, Materialized) else d  # decoded whole already: use views of it
        if not isinstance(d, np.ndarray):
            self.buf = scratch(f"arith.delta{index}", 4 * block).view(np.uint32)

    def block(self, s: int, e: int) -> np.ndarray:
        if isinstance(self.d, np.ndarray):
            return self.d[s:e].view(np.float32)
        self.d.fill(s, self.buf[: e - s])
        return self.buf[: e - s].view(np.float32)


def _add_and_narrow(acc: np.ndarray, base: tuple[np.ndarray, str], terms: list[tuple[np.float32, np.ndarray]], out: np.ndarray,
                    out_dtype: str) -> None:
    """The block step of ``combine``: ``acc`` (fp32 base) += Σ alpha * Δ, rounded into ``out``.

    Every element whose result is not NaN is computed exactly by the fast numpy path
    (NaN-ness does not depend on which NaN wins); NaN payloads are then settled on the
    few NaN elements alone, so a block without NaN pays one max() for the check.
    """
    for alpha, d in terms:
        _accumulate(acc, alpha, d)
    nans = np.flatnonzero(np.isnan(acc)) if np.isnan(acc.max()) else None
    if nans is not None:
        acc.view(np.uint32)[nans] = _replay_nans(nans, base, terms)
    _narrow(acc, out_dtype, out, nans)


def _accumulate(acc: np.ndarray, alpha: np.float32, d: np.ndarray) -> None:
    """``acc ← fp32(acc + alpha·d)`` with one rounding, as fmaf (and torch's CPU add_) computes it."""
    if alpha == 1:  # the common case: the product is exact, fused = a plain fp32 add
        np.add(acc, d, out=acc)
    elif alpha == -1:
        np.subtract(acc, d, out=acc)
    else:
        for s in range(0, acc.size, _FUSED_PIECE):
            _fused_piece(acc[s : s + _FUSED_PIECE], alpha, d[s : s + _FUSED_PIECE])


def _fused_piece(acc: np.ndarray, alpha: np.float32, d: np.ndarray) -> None:
    """fmaf(alpha, d, acc) elementwise, in float64, correcting only where double rounding can err.

    alpha·d is exact in float64 (24 + 24 significant bits <= 53); their sum s is rounded
    once, to float64. Rounding s to fp32 then gives the fused result except where s lies
    exactly on an fp32 midpoint (a tie) that the exact sum was not on: every fp32 midpoint
    is a float64 value, so an exact sum on one side of it cannot round past it. Those
    elements (a tie's bit pattern, or the fp32-subnormal range, where midpoints sit
    elsewhere; rare) take the exact error (TwoSum) and round to odd, after which the fp32
    rounding is correct (53 >= 24 + 2). Non-finite sums are left as they are (their NaN
    bits are settled by ``_replay_nans``).
    """
    n = acc.size
    p, s = (scratch(f"arith.f64.{k}", 8 * n).view(np.float64) for k in "ps")
    # Widened first, then computed in float64 alone: a mixed fp32/float64 ufunc casts through a
    # buffer on every call and cost 1.4x these four passes (measured per 2^17 elements).
    np.copyto(p, d)
    np.multiply(p, np.float64(alpha), out=p)
    np.copyto(s, acc)
    np.add(s, p, out=s)
    bits, low = s.view(np.int64), scratch("arith.i64", 8 * n).view(np.int64)
    suspect, small = (scratch(f"arith.{k}", n).view(np.bool_) for k in ("suspect", "small"))
    np.bitwise_and(bits, _BELOW_F32, out=low)
    np.equal(low, _F32_MIDPOINT, out=suspect)  # the 29 bits fp32 drops are exactly one half
    np.bitwise_and(bits, _F64_EXPONENT, out=low)  # the exponent field in place, the sign dropped
    np.less(low, _F32_SUBNORMAL_FIELD, out=small)
    np.logical_or(suspect, small, out=suspect)
    if suspect.any():
        at = np.flatnonzero(suspect)
        a, b = acc[at].astype(np.float64), p[at]
        t = a + b
        b_part = t - a  # TwoSum (Knuth): the exact error of t = a + b
        err = (a - (t - b_part)) + (b - b_part)
        _round_to_odd(t, err)
        s[at] = t
    np.copyto(acc, s, casting="same_kind")


def _round_to_odd(s: np.ndarray, err: np.ndarray) -> None:
    """Turn round-to-nearest ``s`` (error ``err``) into round to odd: truncate toward zero, then set the last bit if inexact."""
    sb, eb = s.view(np.int64), err.view(np.int64)
    inexact = scratch("arith.inexact", s.size).view(np.bool_)[: s.size]
    np.greater(np.abs(err), 0, out=inexact)  # false for NaN error: an infinite or NaN sum
    toward_zero = scratch("arith.i64", 8 * s.size).view(np.int64)
    np.bitwise_xor(eb, sb, out=toward_zero)
    np.right_shift(toward_zero, 63, out=toward_zero)  # -1 where err and s differ in sign: s rounded away from zero
    np.multiply(toward_zero, inexact, out=toward_zero)
    np.add(sb, toward_zero, out=sb)
    np.bitwise_or(sb, inexact, out=sb)


def _replay_nans(nans: np.ndarray, base: tuple[np.ndarray, str], terms: list[tuple[np.float32, np.ndarray]]) -> np.ndarray:
    """The fp32 bits torch gave at the elements ``nans`` whose result is NaN.

    Its rules (x86, measured on torch 2.13's CPU kernels): fp32(F16 NaN) keeps sign and
    payload, quieted, except among the last n mod 8 elements of a call, which its scalar
    tail turns into 0x7FFFFFFF; a step's NaN is Δ's when Δ is NaN (sign kept, quieted),
    else acc's (quieted), else the default NaN 0xFFC00000 (∞ − ∞, 0·∞).
    """
    bits, dtype = base
    acc = _widen_nans(bits, dtype, nans)
    for alpha, d in terms:
        dn = d[nans]
        step = acc.view(np.float32).copy()
        _accumulate(step, alpha, dn)  # the value where no operand is NaN: ±∞ decides ∞ − ∞ in a later step
        step_bits = step.view(np.uint32)
        step_bits[np.isnan(step)] = _F32_DEFAULT_NAN
        acc_nan = np.isnan(acc.view(np.float32))
        step_bits[acc_nan] = acc[acc_nan] | _F32_QUIET
        d_nan = np.isnan(dn)
        step_bits[d_nan] = dn.view(np.uint32)[d_nan] | _F32_QUIET
        acc = step_bits
    return acc


def _widen_nans(bits: np.ndarray, dtype: str, at: np.ndarray) -> np.ndarray:
    """fp32 bits of ``bits[at]`` as torch widened them (``at``: positions in a call of ``bits.size`` elements)."""
    w = np.empty(at.size, dtype=np.float32)
    _widen(bits[at], dtype, w)
    if dtype != "F16":
        return w.view(np.uint32)
    wb = w.view(np.uint32)
    nan = np.isnan(w)
    wb[nan] |= _F32_QUIET
    wb[nan & (at >= bits.size - bits.size % 8)] = 0x7FFF_FFFF
    return wb


def _widen(bits: np.ndarray, dtype: str, out: np.ndarray) -> None:
    """fp32(bits) into ``out`` (float32), exact; F16 NaNs as numpy leaves them (see ``_widen_nans``)."""
    if dtype == "BF16":
        wide = out.view(np.uint32)
        np.copyto(wide, bits)
        np.left_shift(wide, 16, out=wide)
    elif dtype == "F16":
        _widen_f16(bits, out)
    elif dtype == "F32":
        np.copyto(out.view(np.uint32), bits)
    else:
        raise ValueError(f"no fp32 arithmetic on dtype {dtype}")


def _widen_f16(bits: np.ndarray, out: np.ndarray) -> None:
    """fp32(F16 bits), exact: numpy's own half casts are scalar here (2.5x slower than this).

    The magnitude's bits shifted into place read as fp32 2^-112 times too small (F16's
    subnormals as fp32 subnormals), so one exact multiply rebiases every finite value.
    ±∞ and NaN (rare) would come out finite: a block holding any takes numpy's cast.
    """
    wide = out.view(np.uint32)
    sign = scratch("arith.sign", 4 * bits.size).view(np.uint32)
    np.copyto(wide, bits)
    np.left_shift(wide, 16, out=sign)
    np.bitwise_and(sign, 0x8000_0000, out=sign)
    np.bitwise_and(wide, 0x7FFF, out=wide)
    np.left_shift(wide, 13, out=wide)
    np.multiply(out, np.float32(2.0**112), out=out)
    if bits.size and out.max() >= 65536:  # past F16's largest finite value: an F16 ∞ or NaN
        np.copyto(out, bits.view(np.float16))
        return
    np.bitwise_or(wide, sign, out=wide)


def _narrow(acc: np.ndarray, dtype: str, out: np.ndarray, nans: np.ndarray | None) -> None:
    """Round fp32 ``acc`` to ``dtype`` (nearest even) into ``out`` (raw bits); ``nans``: where acc is NaN, or None."""
    wide = acc.view(np.uint32)
    if dtype == "F32":
        np.copyto(out, wide)
    elif dtype == "BF16":
        _narrow_bf16(wide, out)
        if nans is not None:
            out[nans] = 0xFFFF  # torch's vectorized bf16 rounding: every NaN becomes all ones
    elif dtype == "F16":
        _narrow_f16(wide, out)
        if nans is not None:  # as the F16C instruction: sign, quiet bit, top payload bits
            nan_bits = wide[nans]
            out[nans] = ((nan_bits >> 16) & 0x8000) | 0x7E00 | ((nan_bits >> 13) & 0x3FF)
    else:
        raise ValueError(f"no fp32 arithmetic on dtype {dtype}")


def _narrow_bf16(wide: np.ndarray, out: np.ndarray) -> None:
    """The top 16 bits of fp32 bits, rounded to nearest even (right for every non-NaN, ±∞ and overflow included)."""
    t = scratch("arith.narrow", 4 * wide.size).view(np.uint32)
    np.right_shift(wide, 16, out=t)
    np.bitwise_and(t, 1, out=t)  # the bit kept last: ties go to where it is 0
    np.add(t, 0x7FFF, out=t)
    np.add(t, wide, out=t)
    np.right_shift(t, 16, out=t)
    np.copyto(out, t, casting="unsafe")  # faster than a right_shift casting into ``out`` (buffered)


def _narrow_f16(wide: np.ndarray, out: np.ndarray) -> None:
    """F16 bits of fp32 bits, rounded to nearest even (right for every non-NaN; numpy's half cast is scalar here).

    Normal results: rebias the exponent and round at bit 13 as ``_narrow_bf16`` does at
    bit 16, clamping overflow to ∞. Results below F16's smallest normal: adding 0.5 in
    fp32 puts the subnormal's bits at the bottom of the sum, rounded by the hardware.
    """
    n = wide.size
    mag, t, low = (scratch(f"arith.f16.{k}", 4 * n).view(np.uint32) for k in ("mag", "t", "low"))
    np.bitwise_and(wide, 0x7FFF_FFFF, out=mag)
    np.right_shift(mag, 13, out=t)
    np.bitwise_and(t, 1, out=t)
    np.add(t, np.uint32((0xFFF - ((127 - 15) << 23)) & 0xFFFF_FFFF), out=t)  # wraps for tiny values: replaced below
    np.add(t, mag, out=t)
    np.right_shift(t, 13, out=t)
    np.minimum(t, 0x7C00, out=t)
    tiny = scratch("arith.f16.tiny", n).view(np.bool_)[:n]
    np.less(mag, 0x3880_0000, out=tiny)
    np.add(mag.view(np.float32), np.float32(0.5), out=low.view(np.float32))
    np.subtract(low, 0x3F00_0000, out=low)
    np.copyto(t, low, where=tiny)
    np.right_shift(wide, 16, out=low)
    np.bitwise_and(low, 0x8000, out=low)
    np.bitwise_or(t, low, out=t)
    np.copyto(out, t, casting="unsafe")


@_ieee_quietly
def difference_checked(base_bits: np.ndarray, base_dtype: str, post_bits: np.ndarray, post_dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """``difference`` and the indices where ``combine(base, [(1, Δ)], post_dtype)`` is not the post.

    Block by block (see BLOCK), so base and post are read from memory once; the check
    runs ``combine``'s own block step, so what extract records as exact is what apply computes.
    """
    n = base_bits.size
    d = np.empty(n, dtype=np.uint32)
    check = np.empty(min(n, BLOCK), dtype=post_bits.dtype)
    b = scratch("arith.acc", 4 * min(n, BLOCK)).view(np.float32)
    bad = []
    for s in range(0, n, BLOCK):
        e = min(n, s + BLOCK)
        d_block = d[s:e].view(np.float32)
        _difference_block((base_bits[s:e], base_dtype), (post_bits[s:e], post_dtype), d_block, b[: e - s])
        _add_and_narrow(b[: e - s], (base_bits[s:e], base_dtype), [(np.float32(1), d_block)], check[: e - s], post_dtype)
        wrong = np.flatnonzero(check[: e - s] != post_bits[s:e])
        if wrong.size:
            bad.append(wrong + s)
    return d, (np.concatenate(bad) if bad else np.empty(0, dtype=np.int64))


def _difference_block(base: tuple[np.ndarray, str], post: tuple[np.ndarray, str], d: np.ndarray, base_wide: np.ndarray) -> None:
    """``d`` = fp32(post) − fp32(base), leaving fp32(base) in ``base_wide``.

    NaN bits as torch's sub: base's NaN (quieted, sign kept) over post's, else ∞ − ∞'s default NaN.
    """
    _widen(*base, base_wide)
    _widen(*post, d)
    np.subtract(d, base_wide, out=d)
    if not d.size or not np.isnan(d.max()):
        return
    nans = np.flatnonzero(np.isnan(d))
    p = _widen_nans(*post, nans)
    b = _widen_nans(*base, nans)
    fixed = np.full(nans.size, _F32_DEFAULT_NAN, dtype=np.uint32)
    p_nan, b_nan = np.isnan(p.view(np.float32)), np.isnan(b.view(np.float32))
    fixed[p_nan] = p[p_nan] | _F32_QUIET
    fixed[b_nan] = b[b_nan] | _F32_QUIET
    d.view(np.uint32)[nans] = fixed


@_ieee_quietly
def difference(base_bits: np.ndarray, base_dtype: str, post_bits: np.ndarray, post_dtype: str) -> np.ndarray:
    """fp32(post) − fp32(base), as fp32 bits (uint32)."""
    n = base_bits.size
    d = np.empty(n, dtype=np.uint32)
    b = np.empty(n, dtype=np.float32)
    _difference_block((base_bits, base_dtype), (post_bits, post_dtype), d.view(np.float32), b)
    return d


@_ieee_quietly
def cast(bits: np.ndarray, from_dtype: str, to_dtype: str) -> np.ndarray:
    """Raw bits of the elements converted from one float dtype to another (round to nearest even).

    Same dtype: ``bits`` itself. NaN bits as torch's ``.to()``: see ``_widen_nans`` and
    ``_narrow``, except F16 -> BF16, which torch converts element by element to 0x7FC0.
    """
    if from_dtype == to_dtype:
        return bits
    wide = np.empty(bits.size, dtype=np.float32)
    _widen(bits, from_dtype, wide)
    nans = np.flatnonzero(np.isnan(wide)) if bits.size and np.isnan(wide.max()) else None
    if nans is not None:
        wide.view(np.uint32)[nans] = _widen_nans(bits, from_dtype, nans)
    out = np.empty(bits.size, dtype=uint_dtype(to_dtype))
    _narrow(wide, to_dtype, out, nans)
    if nans is not None and (from_dtype, to_dtype) == ("F16", "BF16"):
        out[nans] = 0x7FC0
    return out


# ---- torch, for devices other than the CPU ----


def _combine_torch(base_bits: np.ndarray, base_dtype: str, deltas: Sequence[tuple[float, np.ndarray | Decoded]], out_dtype: str,
                   device: str) -> np.ndarray:
    """``combine`` on a torch device (e.g. cuda): the whole chunk at once, fp32 ``add_`` with alpha."""
    torch = _torch()
    acc = bits_to_torch(base_bits, base_dtype).to(device=device, dtype=torch.float32, copy=True)
    for alpha, d in deltas:
        d = d if isinstance(d, np.ndarray) else d.array()
        acc.add_(bits_to_torch(d, "F32").to(device), alpha=alpha)
    return torch_to_bits(acc.to(torch_dtype(out_dtype)).cpu())


@cache
def _torch() -> ModuleType:
    try:
        import torch
    except ImportError:
        raise ParamDeltaError("a device other than the CPU needs torch: pip install 'paramdelta[torch]' "
                              "(the CPU arithmetic needs none)") from None
    return torch


@cache
def torch_dtype(name: str) -> torch.dtype:
    tm = _torch()
    dtype: torch.dtype = {"F16": tm.float16, "BF16": tm.bfloat16, "F32": tm.float32}[name]
    return dtype


def bits_to_torch(bits: np.ndarray, dtype: str) -> torch.Tensor:
    """View raw element bits (numpy unsigned ints) as a torch tensor of ``dtype``, without copying."""
    signed = bits.view(np.dtype(f"i{bits.dtype.itemsize}")) if bits.dtype.itemsize > 1 else bits
    tensor: torch.Tensor = _torch().from_numpy(signed).view(torch_dtype(dtype))
    return tensor


def torch_to_bits(t: torch.Tensor) -> np.ndarray:
    """Raw bits of a CPU tensor as numpy unsigned ints (no copy)."""
    torch = _torch()
    signed_for_itemsize = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    signed = t.view(signed_for_itemsize[t.element_size()]).numpy()
    return signed.view(UINT_FOR_ITEMSIZE[t.element_size()])
