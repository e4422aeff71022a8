"""The numpy arithmetic gives, bit for bit, what the torch code it replaced gave.

The reference below is the CPU code deltaformat.arith ran with torch (blocks of 2^18,
one intra-op thread as deltaformat._parallel set for every worker). Every (base, output)
dtype pair among F16/BF16/F32 and several α are compared on random values and on the
values where implementations part: NaNs with payloads and both signs (signalling too),
±∞, ±0, subnormals, narrowing ties, the largest finite values and sums that overflow on
narrowing, with sizes that are not multiples of a block or of 8.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch", reason="the numpy arithmetic is compared against torch, which is not installed")

from deltaformat import arith  # noqa: E402

# Overflow to ∞ and ∞ − ∞ are results here: numpy must not print warnings about them during apply.
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

DTYPES = ("F16", "BF16", "F32")
ALPHAS = (1.0, 0.5, 0.7, -1.0, 1e-3, 3.0)
UINT = {"F16": np.uint16, "BF16": np.uint16, "F32": np.uint32}
TORCH_BLOCK = 1 << 18
# Past one numpy block and one torch block, and neither a multiple of 8 (the F16 tail).
SIZES = (1, 7, 8, 1003, arith.BLOCK + 13)


# ---- the torch reference: the code arith.py ran on the CPU before numpy ----


def _tdtype(name: str):
    return {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}[name]


def _t(bits: np.ndarray, dtype: str):
    signed = bits.view(np.dtype(f"i{bits.dtype.itemsize}"))
    return torch.from_numpy(signed).view(_tdtype(dtype))


def _bits(t) -> np.ndarray:
    signed = t.view({2: torch.int16, 4: torch.int32}[t.element_size()]).numpy()
    return signed.view(UINT["F32"] if t.element_size() == 4 else np.uint16)


def torch_combine(base_bits, base_dtype, deltas, out_dtype):
    n = base_bits.size
    out = np.empty(n, dtype=UINT[out_dtype])
    base_t, out_t = _t(base_bits, base_dtype), _t(out, out_dtype)
    acc = torch.empty(min(n, TORCH_BLOCK), dtype=torch.float32)
    for s in range(0, n, TORCH_BLOCK):
        e = min(n, s + TORCH_BLOCK)
        a = acc[: e - s]
        a.copy_(base_t[s:e])
        for alpha, d in deltas:
            a.add_(_t(d, "F32")[s:e], alpha=alpha)
        out_t[s:e].copy_(a)
    return out


def torch_difference_checked(base_bits, base_dtype, post_bits, post_dtype):
    n = base_bits.size
    d = np.empty(n, dtype=np.uint32)
    check = np.empty(min(n, TORCH_BLOCK), dtype=post_bits.dtype)
    base_t, post_t, d_t, check_t = _t(base_bits, base_dtype), _t(post_bits, post_dtype), _t(d, "F32"), _t(check, post_dtype)
    pf, bf = torch.empty(min(n, TORCH_BLOCK)), torch.empty(min(n, TORCH_BLOCK))
    bad = []
    for s in range(0, n, TORCH_BLOCK):
        e = min(n, s + TORCH_BLOCK)
        p, b = pf[: e - s], bf[: e - s]
        p.copy_(post_t[s:e])
        b.copy_(base_t[s:e])
        torch.sub(p, b, out=d_t[s:e])
        b.add_(d_t[s:e], alpha=1.0)
        check_t[: e - s].copy_(b)
        wrong = np.flatnonzero(check[: e - s] != post_bits[s:e])
        if wrong.size:
            bad.append(wrong + s)
    return d, (np.concatenate(bad) if bad else np.empty(0, dtype=np.int64))


def torch_difference(base_bits, base_dtype, post_bits, post_dtype):
    return _bits(_t(post_bits, post_dtype).float() - _t(base_bits, base_dtype).float())


def torch_cast(bits, from_dtype, to_dtype):
    return _bits(_t(bits, from_dtype).to(_tdtype(to_dtype)))


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """apply and extract ran torch on one intra-op thread per worker (its F16 tail depends on the split)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- inputs ----


def specials(dtype: str) -> np.ndarray:
    """Raw bits of the values where implementations part, for ``dtype``."""
    if dtype == "F32":
        v = [0x7FC00000, 0xFFC00000, 0x7FC12345, 0xFFC54321, 0x7F800001, 0xFF812345, 0x7FFFFFFF,  # NaNs, signalling too
             0x7F800000, 0xFF800000, 0, 0x80000000, 1, 0x80000001, 0x007FFFFF, 0x807FFFFF,  # ±∞, ±0, subnormals
             0x7F7FFFFF, 0xFF7FFFFF, 0x7F7F8000, 0x3F808000, 0x3F818000, 0x3F800FFF, 0x3F801000,  # max, bf16/f16 ties
             0x477FF000, 0x477FEFFF, 0x38800000, 0x33800000, 0x33000001, 0x3F800000, 0xBF800000]  # f16 overflow, subnormal edges
    elif dtype == "BF16":
        v = [0x7FC0, 0xFFC0, 0x7FC5, 0xFFA3, 0x7F81, 0xFF81, 0x7FFF, 0x7F80, 0xFF80, 0, 0x8000, 1, 0x8001, 0x007F,
             0x807F, 0x7F7F, 0xFF7F, 0x3F80, 0xBF80, 0x4780, 0x3380]
    else:
        v = [0x7E00, 0xFE00, 0x7E55, 0xFD55, 0x7C01, 0xFC01, 0x7FFF, 0x7C00, 0xFC00, 0, 0x8000, 1, 0x8001, 0x03FF,
             0x83FF, 0x7BFF, 0xFBFF, 0x3C00, 0xBC00, 0x0400]
    return np.array(v, dtype=UINT[dtype])


def values(dtype: str, n: int, rng: np.random.Generator, scale: float = 0.02) -> np.ndarray:
    """``n`` random values of ``dtype`` with every special value among them, some in the last n mod 8 places."""
    with np.errstate(over="ignore"):  # scale 1e38: some overflow to ±∞, as wanted
        f = (rng.standard_normal(n) * scale).astype(np.float32)
    bits = arith.cast(f.view(np.uint32), "F32", dtype).copy() if dtype != "F32" else f.view(np.uint32).copy()
    sp = specials(dtype)
    k = min(n, sp.size)
    bits[rng.choice(n, size=k, replace=False)] = rng.choice(sp, size=k, replace=False)
    bits[-min(n, 7):] = rng.choice(sp, size=min(n, 7))
    return bits


def deltas(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Δs as fp32 bits: fine-tune sized, large enough to overflow, and all specials."""
    return [values("F32", n, rng, 1e-3), values("F32", n, rng, 1e38), values("F32", n, rng, 1.0)]


def assert_bits_equal(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape, what
    wrong = np.flatnonzero(got != want)
    assert not wrong.size, f"{what}: {wrong.size} elements differ, first at {wrong[0]}: {got[wrong[0]]:#x} != torch's {want[wrong[0]]:#x}"


# ---- combine ----


@pytest.mark.parametrize("base_dtype", DTYPES)
@pytest.mark.parametrize("out_dtype", DTYPES)
def test_combine_equals_torch_bitwise_for_every_dtype_pair_and_alpha(base_dtype, out_dtype):
    rng = np.random.default_rng([DTYPES.index(base_dtype), DTYPES.index(out_dtype)])
    for n in SIZES:
        base = values(base_dtype, n, rng)
        ds = deltas(n, rng)
        for alpha in ALPHAS:
            for d in ds:
                terms = [(alpha, d)]
                assert_bits_equal(arith.combine(base, base_dtype, terms, out_dtype), torch_combine(base, base_dtype, terms, out_dtype),
                                  f"{base_dtype}->{out_dtype} alpha={alpha} n={n}")
        terms = [(a, d) for a, d in zip(ALPHAS, ds)]  # several artifacts: accumulated in order
        assert_bits_equal(arith.combine(base, base_dtype, terms, out_dtype), torch_combine(base, base_dtype, terms, out_dtype),
                          f"{base_dtype}->{out_dtype} three deltas n={n}")


def fused_midpoint_cases(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(α, acc, Δ) as fp32 where acc + α·Δ lies just off an fp32 tie, too close for float64 to tell.

    α = ±(1 + u·2^-23)·2^i and Δ = ±(1 − u·2^-23)·2^j give α·Δ = ±2^(i+j)·(1 − u²·2^-46), a hair
    below half an ulp of acc = ±(1 + k·2^-23)·2^(i+j+24). One rounding (fmaf, torch's add_)
    goes to the side the exact sum lies on; rounding to float64 first lands on the tie
    itself, and rounding α·Δ to fp32 first too, and ties go to even: wrong where acc is odd.
    """
    u = rng.integers(1, 256, count)
    i, j = rng.integers(-6, 7, count), rng.integers(-30, 30, count)
    sign = lambda: rng.choice([-1.0, 1.0], count)  # noqa: E731
    alpha = (sign() * (1 + u * 2.0**-23) * np.exp2(i)).astype(np.float32)
    d = (sign() * (1 - u * 2.0**-23) * np.exp2(j)).astype(np.float32)
    acc = (sign() * (1 + rng.integers(1, 1 << 23, count) * 2.0**-23) * np.exp2(i + j + 24)).astype(np.float32)
    return alpha, acc, d


def test_combine_rounds_once_like_torch_where_double_rounding_would_not():
    rng = np.random.default_rng(7)
    alphas, acc, d = fused_midpoint_cases(400, rng)
    got, want = np.empty(acc.size, np.uint32), np.empty(acc.size, np.uint32)
    for k, alpha in enumerate(alphas):  # α is one number per call
        base, delta = acc[k : k + 1].view(np.uint32), d[k : k + 1].view(np.uint32)
        got[k] = arith.combine(base, "F32", [(float(alpha), delta)], "F32")[0]
        want[k] = torch_combine(base, "F32", [(float(alpha), delta)], "F32")[0]
    assert_bits_equal(got, want, "acc + alpha*delta next to a tie")
    # The cases bite: both ways of rounding twice give other bits where acc is odd.
    via_f64 = (acc.astype(np.float64) + alphas.astype(np.float64) * d.astype(np.float64)).astype(np.float32)
    two_fp32 = acc + alphas * d
    odd = (acc.view(np.uint32) & 1).astype(bool)
    assert np.array_equal(via_f64.view(np.uint32) != got, odd)
    assert np.array_equal(two_fp32.view(np.uint32) != got, odd)


@settings(max_examples=150, deadline=None)
@given(
    base_dtype=st.sampled_from(DTYPES), out_dtype=st.sampled_from(DTYPES),
    alphas=st.lists(st.one_of(st.sampled_from(ALPHAS), st.floats(-4, 4, width=32)), min_size=1, max_size=3),
    data=st.data(),
)
def test_combine_equals_torch_on_any_bits(base_dtype, out_dtype, alphas, data):
    n = data.draw(st.integers(1, 40), label="n")
    width = 16 if base_dtype != "F32" else 32
    base = np.array(data.draw(st.lists(st.integers(0, 2**width - 1), min_size=n, max_size=n), label="base"), dtype=UINT[base_dtype])
    terms = [(a, np.array(data.draw(st.lists(st.integers(0, 2**32 - 1), min_size=n, max_size=n), label="delta"), dtype=np.uint32))
             for a in alphas]
    assert_bits_equal(arith.combine(base, base_dtype, terms, out_dtype), torch_combine(base, base_dtype, terms, out_dtype),
                      f"{base_dtype}->{out_dtype} alphas={alphas}")


def test_combine_takes_decoded_deltas_block_by_block():
    from deltaformat.codec.base import Decoded

    class Counting(Decoded):
        """A Δ handed out by ``fill`` only, as the rank codec does."""

        def __init__(self, values):
            super().__init__(values.size, values.dtype)
            self.values, self.fills = values, 0

        def fill(self, start, out):
            self.fills += 1
            out[...] = self.values[start : start + out.size]

    rng = np.random.default_rng(3)
    n = 2 * arith.BLOCK + 5
    base, d = values("BF16", n, rng), values("F32", n, rng, 1e-3)
    decoded = Counting(d)
    got = arith.combine(base, "BF16", [(0.7, decoded), (1.0, d)], "BF16")
    assert_bits_equal(got, torch_combine(base, "BF16", [(0.7, d), (1.0, d)], "BF16"), "decoded delta")
    assert decoded.fills == 3  # one block at a time, never the whole chunk


def test_zero_elements():
    e16, e32 = np.empty(0, np.uint16), np.empty(0, np.uint32)
    assert arith.combine(e16, "BF16", [(0.7, e32)], "F16").size == 0
    assert arith.difference(e16, "F16", e16, "BF16").size == 0
    assert all(x.size == 0 for x in arith.difference_checked(e16, "F16", e16, "BF16"))
    assert arith.cast(e32, "F32", "F16").size == 0


def test_alpha_outside_float32_is_refused_by_name():
    base, d = np.zeros(4, np.uint16), np.zeros(4, np.uint32)
    with pytest.raises(ValueError, match="alpha 1e\\+40 is outside float32"):
        arith.combine(base, "BF16", [(1e40, d)], "BF16")


# ---- difference, difference_checked, cast ----


@pytest.mark.parametrize("base_dtype", DTYPES)
@pytest.mark.parametrize("post_dtype", DTYPES)
def test_difference_checked_equals_torch(base_dtype, post_dtype):
    rng = np.random.default_rng([10 + DTYPES.index(base_dtype), DTYPES.index(post_dtype)])
    for n in SIZES:
        base = values(base_dtype, n, rng)
        post = values(post_dtype, n, rng)
        post[: n // 3] = arith.cast(base[: n // 3], base_dtype, post_dtype)  # unchanged elements, as in a fine-tune
        d, bad = arith.difference_checked(base, base_dtype, post, post_dtype)
        want_d, want_bad = torch_difference_checked(base, base_dtype, post, post_dtype)
        assert_bits_equal(d, want_d, f"Δ {base_dtype}->{post_dtype} n={n}")
        assert_bits_equal(bad, want_bad, f"inexact elements {base_dtype}->{post_dtype} n={n}")
        assert_bits_equal(arith.difference(base, base_dtype, post, post_dtype), torch_difference(base, base_dtype, post, post_dtype),
                          f"difference {base_dtype}->{post_dtype} n={n}")


@pytest.mark.parametrize("from_dtype", DTYPES)
@pytest.mark.parametrize("to_dtype", DTYPES)
def test_cast_equals_torch(from_dtype, to_dtype):
    rng = np.random.default_rng([20 + DTYPES.index(from_dtype), DTYPES.index(to_dtype)])
    for n in (1, 5, 8, 1003, 70_001):
        bits = values(from_dtype, n, rng, 1e3)
        assert_bits_equal(arith.cast(bits, from_dtype, to_dtype), torch_cast(bits, from_dtype, to_dtype), f"{from_dtype}->{to_dtype} n={n}")
    if from_dtype != "F32":  # every 16-bit pattern, in a call with a tail of 5
        every = np.arange(1 << 16, dtype=np.uint16)
        every = np.concatenate([every, every[-5:]])
        assert_bits_equal(arith.cast(every, from_dtype, to_dtype), torch_cast(every, from_dtype, to_dtype), f"{from_dtype}->{to_dtype} all bits")


# ---- no torch on the CPU ----


def test_cpu_arithmetic_does_not_import_torch():
    code = (
        "import sys, numpy as np\n"
        "from deltaformat.arith import combine, difference_checked, cast\n"
        "b = np.arange(1000, dtype=np.uint16); d = np.arange(1000, dtype=np.uint32)\n"
        "combine(b, 'BF16', [(0.7, d), (1.0, d)], 'F16')\n"
        "difference_checked(b, 'BF16', b, 'F16')\n"
        "cast(b, 'F16', 'BF16')\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def _model(folder, seed: int, like=None):
    """A small bf16 safetensors model (post/new base: ``like`` plus a fine-tune-sized step)."""
    from safetensors.torch import load_file, save_file

    g = torch.Generator().manual_seed(seed)
    if like is None:
        tensors = {f"layer{i}.weight": torch.randn(64, 96, generator=g) * 0.02 for i in range(3)}
    else:
        tensors = {k: v.float() + torch.randn(v.shape, generator=g) * 2e-4 for k, v in load_file(like / "model.safetensors").items()}
    folder.mkdir()
    save_file({k: v.to(torch.bfloat16) for k, v in tensors.items()}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text('{"model_type": "llama", "torch_dtype": "bfloat16"}')
    return folder


def test_library_extract_and_apply_on_the_cpu_do_not_import_torch(tmp_path):
    base = _model(tmp_path / "base", 0)
    post, new = _model(tmp_path / "post", 1, base), _model(tmp_path / "new", 2, base)
    code = (
        "import sys, deltaformat\n"
        f"base, post, new, t = {str(base)!r}, {str(post)!r}, {str(new)!r}, {str(tmp_path)!r}\n"
        "deltaformat.extract(base, post, t + '/delta', quiet=True)\n"
        "assert deltaformat.apply([t + '/delta'], base, t + '/out', quiet=True).verified_exact\n"
        "deltaformat.apply([t + '/delta', t + '/delta'], new, t + '/mix', alphas=[0.7, 0.2], quiet=True)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
