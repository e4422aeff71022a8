"""Lossy codecs (format v2, spec/format-v2.md §5): round trips, error bounds, adversarial chunks, corrupt blobs."""

from __future__ import annotations

import numpy as np
import pytest

from deltaformat.codec import get_codec, get_lossy_codec, lossy_codec_ids
from deltaformat.errors import CorruptBlobError, FormatError
from deltaformat.lossy import PRESETS, ErrorStats

F32_TINY = np.float32(1e-42)  # subnormal
SETTINGS = {  # every codec with the settings its presets use, and some more
    "bf16-rank-zstd-v1": [{}],
    "qgroup-zstd-v1": [{"bits": 8, "group": 128}, {"bits": 4, "group": 128}, {"bits": 2, "group": 64}, {"bits": 4, "group": 7}],
    "sign-zstd-v1": [{"group": 0}, {"group": 5}],
    "lowrank-bf16-v1": [{"energy": 0.9, "max_rank": 256, "budget": 0.0}, {"energy": 1.0, "max_rank": 4, "budget": 0.08}],
}
CASES = {
    "empty": np.zeros(0, np.float32),
    "one": np.array([3e-3], np.float32),
    "zeros": np.zeros(1000, np.float32),
    "constant": np.full(777, -2.5e-4, np.float32),
    "subnormal": np.array([F32_TINY, -F32_TINY, 0, 3 * F32_TINY] * 50, np.float32),
    "huge range": np.array([1e30, -1e-30, 3e10, 1e-20, -7.0] * 40, np.float32),
    "gaussian, no multiple of any group": (np.random.default_rng(1).standard_normal(4099) * 1e-3).astype(np.float32),
    "sparse rows": np.concatenate([np.zeros(300), np.random.default_rng(2).standard_normal(100), np.zeros(600)]).astype(np.float32),
}
COLS = 100  # rows of 100 elements: chunks start mid-row when lead != 0


def roundtrip(codec_id: str, params: dict, d: np.ndarray, lead: int = 0) -> np.ndarray:
    codec = get_lossy_codec(codec_id)
    blob = codec.encode_delta(d, COLS, lead, **params)
    out = codec.decode(blob, d.size, 4)
    assert out.dtype == np.uint32 and out.shape == (d.size,)
    assert codec.encode_delta(d, COLS, lead, **params) == blob  # deterministic
    return out.view(np.float32)


def test_every_lossy_codec_is_covered_and_none_claims_exactness():
    assert set(SETTINGS) == set(lossy_codec_ids())
    assert all(get_codec(c).lossy for c in lossy_codec_ids())
    assert {p.codec for p in PRESETS.values()} <= set(lossy_codec_ids())


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("codec_id,params", [(c, p) for c, ps in SETTINGS.items() for p in ps], ids=str)
@pytest.mark.parametrize("lead", [0, 37])
def test_roundtrip_is_finite_and_exact_where_it_must_be(codec_id, params, case, lead):
    d = CASES[case]
    got = roundtrip(codec_id, params, d, lead)
    assert np.all(np.isfinite(got))
    if case == "zeros":  # an untouched Δ stays untouched, whatever the codec
        assert not got.any()
    stats = ErrorStats.of(d, got)
    assert stats.max_abs >= 0 and stats.err_sq >= 0
    if case == "zeros":
        assert stats.info({}).rel_frobenius_error == 0


@pytest.mark.parametrize("case", [c for c in CASES if c != "empty"])
def test_bf16_error_is_half_a_bf16_ulp(case):
    d = CASES[case]
    got = roundtrip("bf16-rank-zstd-v1", {}, d)
    assert np.all(np.abs(got.astype(np.float64) - d) <= np.abs(d.astype(np.float64)) * 2.0**-8 + 2.0**-134)  # bf16's subnormal half-step


def test_q8_error_is_half_a_step_of_its_group():
    d = CASES["gaussian, no multiple of any group"]
    got = roundtrip("qgroup-zstd-v1", {"bits": 8, "group": 128}, d, lead=0)
    first = 128 - 0 % 128
    for g0 in range(0, d.size, 128):
        group = slice(g0, min(g0 + 128, d.size)) if first == 128 else None
        step = np.abs(d[group]).max() / 127 * (1 + 2.0**-7)  # scales round up to bf16
        assert np.abs(got[group] - d[group]).max() <= step / 2 * (1 + 1e-6)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_qgroup_gets_better_with_more_bits(bits):
    d = CASES["gaussian, no multiple of any group"]
    errs = {b: np.linalg.norm(roundtrip("qgroup-zstd-v1", {"bits": b, "group": 128}, d) - d) for b in (2, 4, 8)}
    assert errs[8] < errs[4] < errs[2] < np.linalg.norm(d)


def test_sign_keeps_signs_and_row_means():
    d = CASES["gaussian, no multiple of any group"][:1000]
    got = roundtrip("sign-zstd-v1", {"group": 0}, d)  # a group per row of COLS
    assert np.array_equal(np.signbit(got), np.signbit(d))
    for r in range(10):
        row = slice(r * COLS, (r + 1) * COLS)
        assert np.allclose(np.abs(got[row]), np.abs(d[row]).mean(), rtol=2.0**-8)


def test_sign_leaves_untouched_rows_at_zero():
    d = CASES["sparse rows"]
    got = roundtrip("sign-zstd-v1", {"group": 0}, d)
    assert not got[:300].any() and not got[400:].any()


def test_lowrank_is_exact_at_full_energy_on_a_low_rank_delta():
    rng = np.random.default_rng(3)
    d = (rng.standard_normal((30, 2)) @ rng.standard_normal((2, COLS)) * 1e-3).astype(np.float32).reshape(-1)
    got = roundtrip("lowrank-bf16-v1", {"energy": 0.999999, "max_rank": 64, "budget": 0.0}, d)
    assert np.linalg.norm(got - d) / np.linalg.norm(d) < 2e-2  # bf16 factors only
    blob = get_lossy_codec("lowrank-bf16-v1").encode_delta(d, COLS, 0, energy=0.999999, max_rank=64, budget=0.0)
    assert int.from_bytes(blob[12:14], "little") == 2  # the rank found


def test_lowrank_budget_caps_the_size():
    d = (np.random.default_rng(4).standard_normal(200 * COLS) * 1e-3).astype(np.float32)
    blob = get_lossy_codec("lowrank-bf16-v1").encode_delta(d, COLS, 0, energy=1.0, max_rank=1024, budget=0.08)
    assert len(blob) <= 0.08 * d.size + 64


@pytest.mark.parametrize("codec_id", lossy_codec_ids())
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_delta_is_refused(codec_id, bad):
    d = np.zeros(300, np.float32)
    d[17] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        get_lossy_codec(codec_id).encode_delta(d, COLS, 0, **SETTINGS[codec_id][0])


def test_unknown_settings_are_refused():
    with pytest.raises(ValueError, match="unknown setting 'bitz'"):
        get_lossy_codec("qgroup-zstd-v1").settings(bitz=3)
    with pytest.raises(ValueError, match="bits must be one of"):
        get_lossy_codec("qgroup-zstd-v1").encode_delta(np.ones(9, np.float32), COLS, 0, bits=3, group=8)


def test_an_exact_codec_is_not_a_lossy_one():
    with pytest.raises(FormatError, match="exact, not a lossy codec"):
        get_lossy_codec("rank-zstd-v1")


@pytest.mark.parametrize("codec_id,params", [(c, ps[0]) for c, ps in SETTINGS.items()])
def test_corrupt_blobs_are_refused(codec_id, params):
    d = CASES["gaussian, no multiple of any group"]
    codec = get_lossy_codec(codec_id)
    blob = codec.encode_delta(d, COLS, 0, **params)
    for broken in (blob[:-1], blob + b"\0", blob[:3]):
        with pytest.raises(CorruptBlobError):
            codec.decode(broken, d.size, 4)
    with pytest.raises(CorruptBlobError):
        codec.decode(blob, d.size + 1, 4)  # another element count than the manifest's
    with pytest.raises(CorruptBlobError):
        codec.decode(blob, d.size, 2)  # lossy codecs decode F32 Δ only


def test_declared_sizes_are_checked_before_allocating():
    qg, lr = get_lossy_codec("qgroup-zstd-v1"), get_lossy_codec("lowrank-bf16-v1")
    ten = (10).to_bytes(4, "little")
    with pytest.raises(CorruptBlobError, match="bits 3"):
        qg.decode(bytes([3]) + ten + (128).to_bytes(4, "little") * 2, 10, 4)
    with pytest.raises(CorruptBlobError, match="holds 10 elements, manifest says 11"):
        qg.decode(bytes([4]) + ten + (128).to_bytes(4, "little") * 2, 11, 4)
    with pytest.raises(CorruptBlobError, match="group size"):
        qg.decode(bytes([4]) + ten + (1 << 30).to_bytes(4, "little") * 2, 10, 4)
    with pytest.raises(CorruptBlobError, match="columns"):
        lr.decode(ten + (1 << 31).to_bytes(4, "little") + bytes(4) + (1).to_bytes(2, "little"), 10, 4)
    with pytest.raises(CorruptBlobError, match="rank 9"):  # 10 elements in rows of 5: rank at most 2
        lr.decode(ten + (5).to_bytes(4, "little") + bytes(4) + (9).to_bytes(2, "little"), 10, 4)


def test_scales_that_are_not_finite_are_refused():
    codec = get_lossy_codec("sign-zstd-v1")
    blob = bytearray(codec.encode_delta(np.ones(10, np.float32), 10, 0, group=0))
    import zstandard

    from deltaformat.codec._lossyframes import U32
    nan_scale = zstandard.ZstdCompressor(write_content_size=True).compress(np.array([0x7FC0], "<u2").tobytes())
    signs = zstandard.ZstdCompressor(write_content_size=True).compress(bytes(2))
    forged = bytes(blob[:12]) + U32.pack(len(nan_scale)) + nan_scale + U32.pack(len(signs)) + signs
    with pytest.raises(CorruptBlobError, match="not finite"):
        codec.decode(forged, 10, 4)
