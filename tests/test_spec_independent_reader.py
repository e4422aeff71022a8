"""An independent reader written from spec/format-v1.md alone (no deltaformat imports).

It reads each test vector's artifact, checks every checksum the spec names, decodes the
streams and patch, applies the delta to the vector's base with numpy, and must reproduce
the post model's bytes. If the spec were imprecise, this reader would disagree.
Format v2 vectors (spec/format-v2.md): exact ones reproduce the post model the same way; lossy ones
must decode to the reference's Δ (vector/decoded/) and carry honest error statistics.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import zstandard

VECTORS = sorted(p for p in (Path(__file__).resolve().parent.parent / "spec" / "vectors").iterdir() if p.is_dir())
WIDTH = {"BF16": 2, "F16": 2, "F32": 4, "I64": 8}
UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def read_safetensors(path: Path) -> dict[str, tuple[str, list[int], bytes]]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header.pop("__metadata__", None)
    return {k: (v["dtype"], v["shape"], raw[8 + n + v["data_offsets"][0] : 8 + n + v["data_offsets"][1]]) for k, v in header.items()}


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tensor_digest(data: bytes, width: int, chunk_elements: int) -> str:
    step = chunk_elements * width
    pieces = [data[i : i + step] for i in range(0, len(data), step)] or [b""]
    return sha(b"".join(hashlib.sha256(p).digest() for p in pieces))


def decode_bytegroup(blob: bytes, n: int, width: int) -> np.ndarray:
    planes, pos = [], 0
    for _ in range(width):
        (length,) = struct.unpack_from("<I", blob, pos)
        frame = blob[pos + 4 : pos + 4 + length]
        assert zstandard.get_frame_parameters(frame).content_size == n
        planes.append(np.frombuffer(zstandard.ZstdDecompressor().decompress(frame), np.uint8))
        pos += 4 + length
    assert pos == len(blob)
    return np.stack(planes, axis=1).reshape(-1).view(UINT[width]) if n else np.empty(0, UINT[width])


def zstd_stream(blob: bytes, pos: int, n: int) -> tuple[bytes, int]:
    (length,) = struct.unpack_from("<I", blob, pos)
    frame = blob[pos + 4 : pos + 4 + length]
    assert zstandard.get_frame_parameters(frame).content_size == n
    data = zstandard.ZstdDecompressor().decompress(frame)
    assert len(data) == n
    return data, pos + 4 + length


def plane_set(blob: bytes, pos: int, n: int, width: int) -> tuple[np.ndarray, int]:
    if n == 0:
        return np.empty(0, UINT[width]), pos
    planes = []
    for _ in range(width):
        data, pos = zstd_stream(blob, pos, n)
        planes.append(np.frombuffer(data, np.uint8))
    return np.stack(planes, axis=1).reshape(-1).view(UINT[width]), pos


def decode_rank(blob: bytes, n: int, width: int, depth: int = 0) -> np.ndarray:
    """rank-zstd-v1, per spec §5.2."""
    mode, pos = blob[0], 1
    if mode == 0:
        assert len(blob) == 1 + n * width
        return np.frombuffer(blob, UINT[width], n, 1)
    if mode == 1:
        out, pos = plane_set(blob, pos, n, width)
        assert pos == len(blob)
        return out
    count, k = struct.unpack_from("<IB", blob, pos)
    assert count == n and 1 <= k <= 255
    pos += 5
    table = np.frombuffer(blob, UINT[width], k, pos)
    pos += k * width
    (escapes,) = struct.unpack_from("<I", blob, pos)
    pos += 4
    if mode == 2:
        where = np.arange(n)
        sym_bytes, pos = zstd_stream(blob, pos, n)
        out = np.empty(n, UINT[width])
    else:
        assert mode == 3 and depth < 3
        marked, bitmap_len = struct.unpack_from("<II", blob, pos)
        pos += 8
        bitmap = decode_rank(blob[pos : pos + bitmap_len], -(-n // 8), 1, depth + 1)
        pos += bitmap_len
        flags = np.unpackbits(bitmap, bitorder="little")
        assert not flags[n:].any() and int(flags.sum()) == marked
        where = np.flatnonzero(flags[:n])
        sym_bytes, pos = zstd_stream(blob, pos, marked) if marked else (b"", pos)
        out = np.full(n, table[0], UINT[width])
    sym = np.frombuffer(sym_bytes, np.uint8)
    esc, pos = plane_set(blob, pos, escapes, width)
    assert pos == len(blob) and int((sym >= k).sum()) == escapes
    vals = table[np.minimum(sym, k - 1)]
    vals[sym >= k] = esc
    out[where] = vals
    return out


def to_f32(bits: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        return (bits.astype(np.uint32) << 16).view(np.float32)
    if dtype == "F16":
        return bits.view(np.float16).astype(np.float32)
    return bits.view(np.float32)


def from_f32(x: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":  # round to nearest even (no NaNs in the vectors)
        u = x.view(np.uint32).astype(np.uint64)
        return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    if dtype == "F16":
        return x.astype(np.float16).view(np.uint16)
    return x.view(np.uint32)


def bf16_f32(raw: bytes) -> np.ndarray:
    return (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)


def groups(n: int, group: int, first: int) -> np.ndarray:
    pos = np.arange(n)
    return np.where(pos < first, 0, (pos - first) // group + 1)


def decode_bf16_rank(blob: bytes, n: int, width: int) -> np.ndarray:
    """bf16-rank-zstd-v1, format-v2.md §5.1."""
    assert width == 4
    return decode_rank(blob, n, 2).astype(np.uint32) << 16


def decode_qgroup(blob: bytes, n: int, width: int) -> np.ndarray:
    """qgroup-zstd-v1, format-v2.md §5.2."""
    bits, count, group, first = struct.unpack_from("<BIII", blob, 0)
    assert bits in (2, 4, 8) and count == n and 1 <= first <= group <= 1 << 22
    if n == 0:
        assert len(blob) == 13
        return np.empty(0, np.uint32)
    n_groups = 1 + (-(-(n - first) // group) if n > first else 0)
    scales, pos = zstd_stream(blob, 13, 2 * n_groups)
    packed, pos = zstd_stream(blob, pos, -(-n * bits // 8))
    assert pos == len(blob)
    codes = np.unpackbits(np.frombuffer(packed, np.uint8), bitorder="little").reshape(-1, bits)
    codes = (codes * (1 << np.arange(bits))).sum(axis=1)
    assert not codes[n:].any()
    k = codes[:n].astype(np.float32) - np.float32(1 << (bits - 1))
    return (k * bf16_f32(scales)[groups(n, group, first)]).astype(np.float32).view(np.uint32)


def decode_sign(blob: bytes, n: int, width: int) -> np.ndarray:
    """sign-zstd-v1, format-v2.md §5.3."""
    count, group, first = struct.unpack_from("<III", blob, 0)
    assert count == n and 1 <= first <= group <= 1 << 22
    if n == 0:
        assert len(blob) == 12
        return np.empty(0, np.uint32)
    n_groups = 1 + (-(-(n - first) // group) if n > first else 0)
    scales, pos = zstd_stream(blob, 12, 2 * n_groups)
    signs, pos = zstd_stream(blob, pos, -(-n // 8))
    assert pos == len(blob)
    neg = np.unpackbits(np.frombuffer(signs, np.uint8), bitorder="little")
    assert not neg[n:].any()
    s = bf16_f32(scales)[groups(n, group, first)]
    return np.where(neg[:n] == 1, -s, s).astype(np.float32).view(np.uint32)


def decode_lowrank(blob: bytes, n: int, width: int) -> np.ndarray:
    """lowrank-bf16-v1, format-v2.md §5.4."""
    count, cols, lead, rank = struct.unpack_from("<IIIH", blob, 0)
    rows = -(-(lead + n) // cols)
    assert count == n and lead < cols and rank <= min(rows, cols)
    if rank == 0:
        assert len(blob) == 14
        return np.zeros(n, np.uint32)
    left, pos = zstd_stream(blob, 14, 2 * rows * rank)
    right, pos = zstd_stream(blob, pos, 2 * rank * cols)
    assert pos == len(blob)
    full = bf16_f32(left).reshape(rows, rank).astype(np.float64) @ bf16_f32(right).reshape(rank, cols).astype(np.float64)
    return full.reshape(-1)[lead : lead + n].astype(np.float32).view(np.uint32)


LOSSY_DECODERS = {"bf16-rank-zstd-v1": decode_bf16_rank, "qgroup-zstd-v1": decode_qgroup,
                  "sign-zstd-v1": decode_sign, "lowrank-bf16-v1": decode_lowrank}


def read_stream(art: Path, s: dict) -> np.ndarray:
    assert ("lossy" in s) == (s["codec"] in LOSSY_DECODERS)  # a lossy codec only on a stream marked lossy
    decode = {"bytegroup-zstd": decode_bytegroup, "rank-zstd-v1": decode_rank, **LOSSY_DECODERS}[s["codec"]]
    width, out = WIDTH[s["dtype"]], []
    for i, c in enumerate(s["chunks"]):
        blob = (art / "blobs" / "sha256" / c["digest"][7:]).read_bytes()
        assert len(blob) == c["size"] and sha(blob) == c["digest"]
        out.append(decode(blob, min(s["chunk_elements"], s["numel"] - i * s["chunk_elements"]), width))
    bits = np.concatenate(out) if out else np.empty(0, UINT[width])
    if "digest" in s:  # v1 only
        assert tensor_digest(bits.tobytes(), width, s["chunk_elements"]) == s["digest"]
    return bits


def check_carried(art: Path, m: dict, vector: Path) -> None:
    """Carried files: v2 blobs are one zstd frame holding the file (format-v2.md §4)."""
    for f in m["files"]:
        blob = (art / "blobs" / "sha256" / f["digest"][7:]).read_bytes()
        assert len(blob) == f["size"] and sha(blob) == f["digest"]
        if m["format_version"] == 2:
            assert f["encoding"] == "zstd" and zstandard.get_frame_parameters(blob).content_size == f["content_size"]
            blob = zstandard.ZstdDecompressor().decompress(blob)
        assert blob == (vector / "post" / f["path"]).read_bytes()


def check_lossy(vector: Path, m: dict, base: dict, post: dict, deltas: dict[str, np.ndarray]) -> None:
    """Decoded Δ equals the reference's; recorded errors are those against the exact Δ (format-v2.md §3, §5)."""
    reference = read_safetensors(vector / "decoded" / "model.safetensors")
    assert set(reference) == set(deltas)
    for t in m["tensors"]:
        if t["name"] not in deltas:
            continue
        got, ref = deltas[t["name"]], np.frombuffer(reference[t["name"]][2], np.float32)
        if t["delta"]["codec"] == "lowrank-bf16-v1":  # one binary64 -> binary32 rounding may differ
            assert np.all(np.abs(got - ref) <= np.spacing(np.abs(ref)))
        else:
            assert got.tobytes() == ref.tobytes(), t["name"]
        bdt, _, braw = base[t["name"]]
        pdt, _, praw = post[t["name"]]
        exact = (to_f32(np.frombuffer(praw, UINT[WIDTH[pdt]]), pdt) - to_f32(np.frombuffer(braw, UINT[WIDTH[bdt]]), bdt)).astype(np.float64)
        err = ref.astype(np.float64) - exact  # against the exact Δ, which is the fp32 difference (spec §1)
        info = t["delta"]["lossy"]
        assert info["max_abs_error"] == pytest.approx(np.abs(err).max(), rel=1e-6, abs=1e-12)
        assert info["delta_frobenius_norm"] == pytest.approx(np.linalg.norm(exact), rel=1e-6)
        assert info["rel_frobenius_error"] == pytest.approx(np.linalg.norm(err) / np.linalg.norm(exact), rel=1e-6)


@pytest.mark.parametrize("vector", VECTORS, ids=lambda p: p.name)
def test_independent_reader_reproduces_post(vector):
    art = vector / "artifact"
    data = (art / "manifest.json").read_bytes()
    assert (art / "manifest.json.sha256").read_text() == sha(data) + "\n"
    m = json.loads(data)
    assert m["format_version"] in (1, 2)
    lossy = m["format_version"] == 2 and not m["exact"]
    assert lossy == any("lossy" in (t["delta"] or {}) for t in m["tensors"])  # never mistaken for exact
    assert lossy == vector.name.startswith("v2-lossy-")
    check_carried(art, m, vector)
    deltas: dict[str, np.ndarray] = {}
    base = read_safetensors(vector / "base" / "model.safetensors")
    post = read_safetensors(vector / "post" / "model.safetensors")
    out = {}
    for t in m["tensors"]:
        name, kind = t["name"], t["kind"]
        if kind == "removed":
            continue
        if kind == "unchanged":
            out[name] = base[name][2]
            continue
        if kind == "added":
            out[name] = read_stream(art, t["values"]).tobytes()
            continue
        bdtype, _, braw = base[name]
        bbits = np.frombuffer(braw, UINT[WIDTH[bdtype]])
        shared = min(bbits.size, int(np.prod(t["post"]["shape"])))
        delta = read_stream(art, t["delta"]).view(np.float32)
        if "lossy" in t["delta"]:
            deltas[name] = delta
        res = from_f32(to_f32(bbits[:shared], bdtype) + delta, bdtype)
        if t["patch"]:
            blob = (art / "blobs" / "sha256" / t["patch"]["digest"][7:]).read_bytes()
            assert sha(blob) == t["patch"]["digest"]
            n, wb, wp = t["patch"]["count"], WIDTH[bdtype], WIDTH[t["post"]["dtype"]]
            payload = zstandard.ZstdDecompressor().decompress(blob)
            assert len(payload) == n * (8 + wb + wp)
            idx = np.frombuffer(payload, "<u8", n).astype(np.int64)
            pb = np.frombuffer(payload, UINT[wb], n, 8 * n)
            pp = np.frombuffer(payload, UINT[wp], n, (8 + wb) * n)
            hit = bbits[idx] == pb
            res[idx[hit]] = pp[hit]
        if t["values"]:
            res = np.concatenate([res, read_stream(art, t["values"])])
        out[name] = res.tobytes()
    assert set(out) == set(post)
    if lossy:
        check_lossy(vector, m, base, post, deltas)
        return
    for name, raw in out.items():
        assert raw == post[name][2], name
        t = next(t for t in m["tensors"] if t["name"] == name)
        assert tensor_digest(raw, WIDTH[post[name][0]], m["chunk_elements"]) == t["post"]["digest"]
    lines = [json.dumps([k, v[1], v[0], tensor_digest(v[2], WIDTH[v[0]], m["chunk_elements"])], separators=(",", ":"))
             for k, v in sorted(post.items())]
    assert sha("".join(line + "\n" for line in lines).encode()) == m["post"]["fingerprint"]
