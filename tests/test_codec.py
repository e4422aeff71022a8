"""Every registered codec: bit-exact round trips on adversarial inputs, and safe decoding.

Safe decoding means: a malformed blob raises CorruptBlobError (never another exception),
a blob that claims more elements than the caller's ``numel`` is rejected, and decoding
never allocates much more than ``numel`` elements, whatever the blob declares.
"""

from __future__ import annotations

import struct
import tracemalloc

import numpy as np
import pytest
import zstandard

from deltaformat.codec import codec_ids, get_codec
from deltaformat.codec.rankzstd import _MAX_BITMAP_DEPTH as _MAX_DEPTH
from deltaformat.codec.rankzstd import MODE_PLANES, MODE_RAW, MODE_TABLE, MODE_TABLE_FLAGS, RankZstd
from deltaformat.errors import CorruptBlobError

CODECS = codec_ids()
RANK = RankZstd.id


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even fp32 -> bf16, as raw uint16 bits (NaN kept quiet)."""
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return r.astype(np.uint16)


def _standin_delta(n: int, rel: float = 0.009, unchanged: float = 0.0, seed: int = 0) -> np.ndarray:
    """fp32 bits of fp32(post) - fp32(base) for bf16 base ~ N(0, 0.02), post = bf16(base + noise)."""
    rng = _rng(seed)
    base = _bf16_bits(rng.normal(0, 0.02, n))
    base_f = (base.astype(np.uint32) << 16).view(np.float32)
    post = _bf16_bits(base_f + rng.normal(0, 0.02 * rel, n).astype(np.float32))
    if unchanged:
        post = np.where(rng.random(n) < unchanged, base, post)
    post_f = (post.astype(np.uint32) << 16).view(np.float32)
    return (post_f - base_f).view(np.uint32)


def _special32() -> np.ndarray:
    return np.array(
        [
            0x00000000,  # +0
            0x80000000,  # -0
            0x7F800000,  # +inf
            0xFF800000,  # -inf
            0x7FC00000,  # quiet NaN
            0x7FC00001,  # quiet NaN with payload
            0xFFC12345,  # negative NaN with payload
            0x7F800001,  # signalling NaN
            0x7FFFFFFF,
            0xFFFFFFFF,
            0x00000001,  # smallest subnormal
            0x807FFFFF,  # largest negative subnormal
            0x00800000,  # smallest normal
            0x7F7FFFFF,  # largest finite
            0x3F800000,  # 1.0
            0x12345678,
        ],
        dtype=np.uint32,
    )


def _special16() -> np.ndarray:
    # bf16 and fp16 specials: ±0, ±inf, NaNs with payloads, subnormals, extremes
    return np.array(
        [0x0000, 0x8000, 0x7F80, 0xFF80, 0x7FC0, 0x7FC1, 0xFFFF, 0x7F81, 0x0001, 0x807F, 0x0080, 0x7F7F,
         0x7C00, 0xFC00, 0x7E01, 0x03FF, 0x3C00, 0x1234],
        dtype=np.uint16,
    )  # fmt: skip


def _cases(dtype) -> dict[str, np.ndarray]:
    dt = np.dtype(dtype)
    bits = 8 * dt.itemsize
    rng = _rng(1)
    info = np.iinfo(dt)
    special = _special32() if bits == 32 else _special16() if bits == 16 else None
    cases: dict[str, np.ndarray] = {
        "empty": np.zeros(0, dt),
        "one zero": np.zeros(1, dt),
        "one max": np.full(1, info.max, dt),
        "all zeros small": np.zeros(17, dt),
        "all zeros large": np.zeros(200_000, dt),
        "single value small": np.full(1000, info.max // 3, dt),
        "single value large": np.full(100_003, info.max // 3, dt),
        "single value with low bits": np.full(50_000, info.max - 1, dt),
        "full range random small": rng.integers(0, info.max, 999, dtype=dt, endpoint=True),
        "full range random large": rng.integers(0, info.max, 300_000, dtype=dt, endpoint=True),
        "two extremes": np.tile(np.array([0, info.max], dt), 40_000),
    }
    if bits <= 16:
        cases["every value once"] = rng.permutation(np.arange(1 << bits, dtype=np.uint64)).astype(dt)
        cases["every value twice, sorted"] = np.repeat(np.arange(1 << bits, dtype=np.uint64), 2).astype(dt)
    else:
        cases["all distinct"] = rng.permutation(np.arange(300_000, dtype=np.uint64) * 4099 + 7).astype(dt)
    cases["exactly 255 values"] = rng.integers(0, 255, 100_000).astype(dt) << dt.type(bits - 8)
    cases["exactly 256 values"] = rng.integers(0, 256, 100_000).astype(dt) << dt.type(bits - 8)
    cases["300 values with low bits"] = (rng.integers(0, 300, 100_000) * 0x01010101).astype(dt)
    cases["mostly one value"] = np.where(rng.random(80_000) < 0.97, info.max // 5, rng.integers(0, 9, 80_000)).astype(dt)
    if special is not None:
        cases["specials"] = special.astype(dt)
        cases["specials repeated"] = np.tile(special.astype(dt), 10_000)
        cases["specials sprinkled"] = np.where(
            rng.random(120_000) < 0.01, rng.choice(special, 120_000), 0
        ).astype(dt)
    if bits == 32:
        d = _standin_delta(300_000)
        cases["realistic delta"] = d
        cases["realistic delta rel 0.03"] = _standin_delta(200_000, rel=0.03, seed=2)
        cases["sparse delta"] = _standin_delta(300_000, unchanged=0.6, seed=3)
        cases["very sparse delta"] = _standin_delta(200_000, unchanged=0.99, seed=4)
        cases["delta with specials"] = np.where(rng.random(d.size) < 0.001, rng.choice(_special32(), d.size), d)
        cases["odd sizes 4095"] = d[:4095]
        cases["odd sizes 4096"] = d[:4096]
        cases["odd sizes 4097"] = d[:4097]
        cases["odd size 131071 (symbols looked up in pairs)"] = d[:131071]
        cases["subnormal deltas"] = rng.integers(0, 1 << 23, 50_000, dtype=np.uint32) | (
            rng.integers(0, 2, 50_000, dtype=np.uint32) << 31
        )
    if bits == 16:
        cases["bf16 weights"] = _bf16_bits(rng.normal(0, 0.02, 200_000))
        cases["fp16 weights"] = rng.normal(0, 0.02, 200_000).astype(np.float16).view(np.uint16)
        cases["bf16 weights, odd size"] = cases["bf16 weights"][:199_999]
    return cases


WIDTHS = [np.uint16, np.uint32]
ALL_CASES = [(dt, name) for dt in WIDTHS for name in _cases(dt)]


@pytest.fixture(scope="module")
def cases_by_dtype():
    return {np.dtype(dt): _cases(dt) for dt in (np.uint8, np.uint16, np.uint32, np.uint64)}


def _roundtrip(codec_id: str, bits: np.ndarray) -> bytes:
    codec = get_codec(codec_id)
    blob = codec.encode(bits)
    assert isinstance(blob, bytes)
    out = codec.decode(blob, bits.size, bits.dtype.itemsize)
    assert out.dtype == bits.dtype.newbyteorder("=") and out.shape == (bits.size,)
    assert np.array_equal(out, bits), f"{codec_id}: round trip differs"
    assert codec.encode(bits) == blob, f"{codec_id}: encode is not deterministic"
    return blob


@pytest.mark.parametrize("codec_id", CODECS)
@pytest.mark.parametrize("dtype,case", ALL_CASES, ids=[f"{np.dtype(d).name}-{c}" for d, c in ALL_CASES])
def test_roundtrip_exact(codec_id, dtype, case, cases_by_dtype):
    _roundtrip(codec_id, cases_by_dtype[np.dtype(dtype)][case])


@pytest.mark.parametrize("dtype", [np.uint8, np.uint64])
@pytest.mark.parametrize("codec_id", CODECS)
def test_roundtrip_other_widths(codec_id, dtype, cases_by_dtype):
    for bits in cases_by_dtype[np.dtype(dtype)].values():
        _roundtrip(codec_id, bits)


def test_rank_noncontiguous_input():
    # (bytegroup-zstd requires contiguous input; the interface does not promise more)
    d = _standin_delta(20_000)
    _roundtrip(RANK, d[::2])


def test_rank_big_endian_input():
    d = _standin_delta(50_000)
    codec = get_codec(RANK)
    blob = codec.encode(d.astype(">u4"))
    assert blob == codec.encode(d)
    assert np.array_equal(codec.decode(blob, d.size, 4), d)


# ------------------------------------------------------------------ rank-zstd modes


def _force(bits: np.ndarray, mode: int) -> bytes:
    c = RankZstd()
    bits = np.ascontiguousarray(bits)
    if mode == MODE_RAW:
        return c._encode_raw(bits)
    if mode == MODE_PLANES:
        return c._encode_planes(bits)
    return c._encode_table(bits, c._plan(bits, sample=False)[0], flags=mode == MODE_TABLE_FLAGS)


@pytest.mark.parametrize("mode", [MODE_RAW, MODE_PLANES, MODE_TABLE, MODE_TABLE_FLAGS])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.uint64])
def test_rank_every_mode_decodes_every_case(mode, dtype, cases_by_dtype):
    codec = get_codec(RANK)
    for name, bits in cases_by_dtype[np.dtype(dtype)].items():
        if bits.size == 0 and mode in (MODE_TABLE, MODE_TABLE_FLAGS):
            continue  # table modes need at least one element
        blob = _force(bits, mode)
        assert blob[0] == mode
        out = codec.decode(blob, bits.size, bits.itemsize)
        assert np.array_equal(out, bits), f"mode {mode} {name}"


def test_rank_picks_expected_modes():
    codec = get_codec(RANK)
    assert codec.encode(_standin_delta(1 << 18))[0] == MODE_TABLE
    assert codec.encode(_standin_delta(1 << 18, unchanged=0.6))[0] == MODE_TABLE_FLAGS
    assert codec.encode(_rng().integers(0, 2**32, 1 << 18, dtype=np.uint32))[0] == MODE_PLANES
    assert codec.encode(np.zeros(0, np.uint32)) == bytes([MODE_RAW])


def test_rank_compresses_standin_near_entropy():
    d = _standin_delta(1 << 20)
    _, counts = np.unique(d, return_counts=True)
    p = counts / counts.sum()
    bound_bytes = float(-(p * np.log2(p)).sum()) / 8 * d.size
    size = len(get_codec(RANK).encode(d))
    assert size <= bound_bytes / 0.95, f"{size / d.size:.4f} B/param vs bound {bound_bytes / d.size:.4f}"
    assert size < len(get_codec("bytegroup-zstd").encode(d))


# ------------------------------------------------------------------ hostile blobs


def _check_hostile(codec_id: str, blob: bytes, numel: int, itemsize: int) -> None:
    """A mutated blob either raises CorruptBlobError or decodes to exactly numel elements."""
    try:
        out = get_codec(codec_id).decode(blob, numel, itemsize)
    except CorruptBlobError as exc:
        assert str(exc)
        return
    assert out.shape == (numel,) and out.dtype.itemsize == itemsize


def _sample_blobs(codec_id: str) -> list[tuple[bytes, int, int]]:
    codec = get_codec(codec_id)
    data = [
        _standin_delta(6_000),
        _standin_delta(20_000, unchanged=0.6, seed=5),
        _rng(2).integers(0, 2**32, 5_000, dtype=np.uint32),
        np.zeros(100, np.uint32),
        _bf16_bits(_rng(3).normal(0, 0.02, 5_000)),
    ]
    blobs = [(codec.encode(d), d.size, d.itemsize) for d in data]
    if codec_id == RANK:
        d = _standin_delta(3_000, unchanged=0.5)
        blobs += [(_force(d, m), d.size, 4) for m in (MODE_RAW, MODE_PLANES, MODE_TABLE, MODE_TABLE_FLAGS)]
    return blobs


@pytest.mark.parametrize("codec_id", CODECS)
def test_truncation_raises(codec_id):
    codec = get_codec(codec_id)
    for blob, numel, w in _sample_blobs(codec_id):
        cuts = sorted({*range(0, min(len(blob), 64)), *range(0, len(blob), max(1, len(blob) // 97)), len(blob) - 1})
        for cut in cuts:
            with pytest.raises(CorruptBlobError):
                codec.decode(blob[:cut], numel, w)


@pytest.mark.parametrize("codec_id", CODECS)
def test_trailing_bytes_and_wrong_numel_raise(codec_id):
    codec = get_codec(codec_id)
    for blob, numel, w in _sample_blobs(codec_id):
        with pytest.raises(CorruptBlobError):
            codec.decode(blob + b"\x00", numel, w)
        with pytest.raises(CorruptBlobError):
            codec.decode(blob, numel + 1, w)
        with pytest.raises(CorruptBlobError):
            codec.decode(blob, numel - 1, w)


@pytest.mark.parametrize("codec_id", CODECS)
def test_random_mutations_never_escape(codec_id):
    rng = _rng(7)
    for blob, numel, w in _sample_blobs(codec_id):
        for _ in range(150):
            b = bytearray(blob)
            kind = rng.integers(0, 3)
            pos = int(rng.integers(0, len(b)))
            if kind == 0:
                b[pos] ^= 1 << int(rng.integers(0, 8))
            elif kind == 1:
                b[pos] = int(rng.integers(0, 256))
            else:
                b[pos:pos] = bytes(rng.integers(0, 256, int(rng.integers(1, 5)), dtype=np.uint8))
            _check_hostile(codec_id, bytes(b), numel, w)
        # header bytes get every value
        for pos in range(min(len(blob), 12)):
            for v in range(256):
                b = bytearray(blob)
                b[pos] = v
                _check_hostile(codec_id, bytes(b), numel, w)


@pytest.mark.parametrize("codec_id", CODECS)
def test_garbage_raises(codec_id):
    codec = get_codec(codec_id)
    for blob in (b"", b"\x00", b"\x01", b"\x02", b"\x03", b"\x04", b"\xff" * 64, bytes(range(256))):
        for numel in (0, 1, 100):
            for w in (2, 4):
                try:
                    out = codec.decode(blob, numel, w)
                except CorruptBlobError:
                    continue
                # only a genuinely valid encoding may decode
                assert out.shape == (numel,)


def _zstd_frame(payload: bytes, content_size: bool = True) -> bytes:
    return zstandard.ZstdCompressor(level=1, write_content_size=content_size).compress(payload)


def _stream(payload: bytes, content_size: bool = True) -> bytes:
    f = _zstd_frame(payload, content_size)
    return struct.pack("<I", len(f)) + f


def _declaring(size: int) -> bytes:
    """A zstd stream whose header declares ``size`` bytes but whose body is tiny."""
    f = bytearray(_zstd_frame(b"\x00" * 1000))
    # rewrite the frame header: magic(4) FHD(1) [window] FCS; use an 8-byte FCS field, single segment
    body = f[4:]
    fhd = body[0]
    fcs_code = fhd >> 6
    single = (fhd >> 5) & 1
    did = fhd & 3
    fcs_len = {0: single, 1: 2, 2: 4, 3: 8}[fcs_code]
    hdr_len = 1 + (0 if single else 1) + [0, 1, 2, 4][did] + fcs_len
    rest = body[hdr_len:]
    new_hdr = bytes([(3 << 6) | (1 << 5) | (fhd & 4)]) + struct.pack("<Q", size)
    frame = bytes(f[:4]) + new_hdr + bytes(rest)
    return struct.pack("<I", len(frame)) + frame


def _bitmap(payload: bytes) -> bytes:
    """A bitmap field holding a raw-mode nested blob."""
    return struct.pack("<I", 1 + len(payload)) + bytes([MODE_RAW]) + payload


def _rank_header(mode: int, table: np.ndarray, escapes: int, extra: bytes = b"", numel: int = 100) -> bytes:
    return bytes([mode]) + struct.pack("<I", numel) + bytes([table.size]) + table.astype("<u4").tobytes() + struct.pack("<I", escapes) + extra


def _deep_bitmaps(numel: int, levels: int) -> bytes:
    """An all-zero blob of ``numel`` elements whose bitmaps nest ``levels`` m = 3 blobs deep."""
    if levels == 0:
        return bytes([MODE_RAW]) + b"\x00" * numel
    w = 4 if numel == 100 else 1
    table = np.zeros(1, f"<u{w}")
    inner = _deep_bitmaps((numel + 7) // 8, levels - 1)
    return (
        bytes([MODE_TABLE_FLAGS]) + struct.pack("<I", numel) + b"\x01" + table.tobytes() + struct.pack("<II", 0, 0)
        + struct.pack("<I", len(inner)) + inner
    )


def test_rank_nesting_limit():
    codec = get_codec(RANK)
    ok = _deep_bitmaps(100, _MAX_DEPTH)
    assert np.array_equal(codec.decode(ok, 100, 4), np.zeros(100, np.uint32))
    with pytest.raises(CorruptBlobError, match="nested deeper"):
        codec.decode(_deep_bitmaps(100, _MAX_DEPTH + 1), 100, 4)
    # a very sparse chunk nests its bitmap and stays near its entropy
    d = _standin_delta(1 << 20, unchanged=0.99, seed=9)
    blob = codec.encode(d)
    assert blob[0] == MODE_TABLE_FLAGS and np.array_equal(codec.decode(blob, d.size, 4), d)


def test_rank_rejects_blobs_claiming_more_than_numel():
    codec = get_codec(RANK)
    big = np.zeros(10_000, np.uint32)
    big[::7] = 0x3F800000
    for blob in (codec.encode(big), _force(big, MODE_PLANES), _force(big, MODE_TABLE), _force(big, MODE_TABLE_FLAGS)):
        with pytest.raises(CorruptBlobError):
            codec.decode(blob, 100, 4)
    t = np.array([0, 0x3F800000], np.uint32)
    hostile = [
        _rank_header(MODE_TABLE, t, 2**32 - 1) + _stream(b"\x00" * 100),  # escapes > numel
        _rank_header(MODE_TABLE, t, 0) + _declaring(1 << 40),  # symbols declare 1 TiB
        _rank_header(MODE_TABLE, t, 0) + _stream(b"\x00" * 101),  # one symbol too many
        _rank_header(MODE_TABLE, t, 0) + _stream(b"\x00" * 100, content_size=False),  # size not declared
        _rank_header(MODE_TABLE, t, 1) + _stream(b"\x00" * 100),  # escape count disagrees with symbols
        _rank_header(MODE_TABLE, t, 0) + _stream(b"\x00" * 99 + b"\xff"),  # undeclared escape
        _rank_header(MODE_TABLE, t, 1) + _stream(b"\x00" * 99 + b"\xff") + _declaring(1 << 36) * 4,
        _rank_header(MODE_TABLE_FLAGS, t, 0, struct.pack("<I", 2**31)) + _bitmap(b"\x00" * 13),  # M > numel
        _rank_header(MODE_TABLE_FLAGS, t, 0, struct.pack("<I", 3)) + _bitmap(b"\x01" + b"\x00" * 12),  # M != bits
        _rank_header(MODE_TABLE_FLAGS, t, 0, struct.pack("<I", 0)) + _bitmap(b"\x00" * 12 + b"\x10"),  # padding
        _rank_header(MODE_TABLE_FLAGS, t, 0, struct.pack("<I", 0)) + _bitmap(b"\x00" * 14),  # bitmap too long
        _rank_header(MODE_TABLE_FLAGS, t, 0, struct.pack("<I", 0)) + _bitmap(b"\x00" * 13)[:-1],  # truncated
        _rank_header(MODE_TABLE_FLAGS, t, 0, struct.pack("<I", 1)) + _bitmap(b"\x01" + b"\x00" * 12) + _declaring(1 << 40),
        _rank_header(MODE_TABLE_FLAGS, t, 0, struct.pack("<I", 0)) + _bitmap(b"\x00" * 13) + b"\x00",  # trailing
        _deep_bitmaps(100, _MAX_DEPTH + 1),  # bitmaps nested too deep
        bytes([MODE_TABLE]) + struct.pack("<I", 100) + b"\x00" + struct.pack("<I", 0) + _stream(b"\x00" * 100),  # empty table
        _rank_header(MODE_TABLE, t, 0, numel=101) + _stream(b"\x00" * 100),  # element count disagrees
        bytes([MODE_PLANES]) + _declaring(1 << 40) * 4,
        bytes([MODE_RAW]) + b"\x00" * 401,
        bytes([9]),
    ]
    for blob in hostile:
        with pytest.raises(CorruptBlobError):
            codec.decode(blob, 100, 4)


@pytest.mark.parametrize("codec_id", CODECS)
def test_decode_memory_is_bounded_by_numel(codec_id):
    """A blob for 4 Mi elements decoded with numel=1000 fails without allocating for 4 Mi."""
    codec = get_codec(codec_id)
    big = np.zeros(1 << 22, np.uint32)
    big[::3] = 0x3F800000
    blobs = [codec.encode(big), bytes([MODE_PLANES]) + _declaring(1 << 40) * 4, _declaring(1 << 40) * 4]
    tracemalloc.start()
    try:
        for blob in blobs:
            tracemalloc.reset_peak()
            base, _ = tracemalloc.get_traced_memory()
            with pytest.raises(CorruptBlobError):
                codec.decode(blob, 1000, 4)
            _, peak = tracemalloc.get_traced_memory()
            assert peak - base < 1 << 20, f"{codec_id}: decode allocated {peak - base} bytes for numel=1000"
    finally:
        tracemalloc.stop()


def test_decode_rejects_bad_arguments():
    codec = get_codec(RANK)
    blob = codec.encode(np.zeros(10, np.uint32))
    for numel, w in ((10, 3), (10, 16), (-1, 4)):
        with pytest.raises(CorruptBlobError):
            codec.decode(blob, numel, w)


@pytest.mark.parametrize("codec_id", CODECS)
def test_threads_give_the_same_blobs(codec_id):
    """Chunks are coded in parallel threads: results must not depend on it."""
    from concurrent.futures import ThreadPoolExecutor

    codec = get_codec(codec_id)
    chunks = [_standin_delta(50_000, unchanged=u, seed=s) for s, u in enumerate((0.0, 0.6, 0.0, 0.95, 0.3, 0.0))]
    serial = [codec.encode(c) for c in chunks]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(codec.encode, chunks)) == serial
        outs = list(pool.map(lambda b: codec.decode(b, 50_000, 4), serial))
    assert all(np.array_equal(o, c) for o, c in zip(outs, chunks))


# ------------------------------------------------------------------ block-by-block decoding


def _with_escapes(n: int, seed: int) -> np.ndarray:
    """A stand-in Δ with some elements no table holds (rank-zstd-v1 escapes)."""
    rng = _rng(seed)
    return np.where(rng.random(n) < 0.002, rng.integers(0, 2**32, n, dtype=np.uint32), _standin_delta(n, seed=seed))


@pytest.mark.parametrize("codec_id", CODECS)
def test_blocks_give_the_same_elements_as_a_whole_decode(codec_id):
    """apply fills Δ block by block; every block must be that slice of the whole decode."""
    codec = get_codec(codec_id)
    big = _with_escapes(700_001, seed=9)  # odd, and over two of combine's 2^18-element blocks
    blobs = [(codec.encode(big), big.size, 4)] + _sample_blobs(codec_id)
    rng = _rng(10)
    for blob, numel, w in blobs:
        whole = codec.decode(blob, numel, w)
        blocks = codec.decode_blocks(blob, numel, w)
        assert np.array_equal(blocks.array(), whole)
        if numel == big.size:
            assert np.array_equal(whole, big)
        for _ in range(20):  # odd and even starts and sizes
            s = int(rng.integers(0, numel))
            out = np.empty(int(rng.integers(0, numel - s + 1)), whole.dtype)
            blocks.fill(s, out)
            assert np.array_equal(out, whole[s : s + out.size]), (s, out.size)
        out = np.empty(numel, whole.dtype)
        for s in range(0, numel, 1 << 18):
            blocks.fill(s, out[s : s + (1 << 18)])
        assert np.array_equal(out, whole)


@pytest.mark.parametrize("codec_id", CODECS)
def test_combine_from_blocks_equals_combine_from_arrays(codec_id):
    """The arithmetic gives the same bits whether Δ comes decoded whole or block by block."""
    from deltaformat.arith import combine

    n = 3 * (1 << 18) + 12_345
    base = _bf16_bits(_rng(11).normal(0, 0.02, n))
    codec = get_codec(codec_id)
    deltas = [_with_escapes(n, seed=12), _standin_delta(n, rel=0.03, seed=13)]
    blobs = [codec.encode(d) for d in deltas]
    for alphas in ([1.0], [0.5, -1.25]):
        as_arrays = combine(base, "BF16", [(a, d) for a, d in zip(alphas, deltas)], "BF16")
        as_blocks = combine(base, "BF16", [(a, codec.decode_blocks(b, n, 4)) for a, b in zip(alphas, blobs)], "BF16")
        assert np.array_equal(as_arrays, as_blocks), alphas
