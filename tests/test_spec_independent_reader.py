"""An independent reader written from spec/format-v1.md alone (no deltaformat imports).

It reads each test vector's artifact, checks every checksum the spec names, decodes the
streams and patch, applies the delta to the vector's base with numpy, and must reproduce
the post model's bytes. If the spec were imprecise, this reader would disagree.
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


def read_stream(art: Path, s: dict) -> np.ndarray:
    decode = {"bytegroup-zstd": decode_bytegroup, "rank-zstd-v1": decode_rank}[s["codec"]]
    width, out = WIDTH[s["dtype"]], []
    for i, c in enumerate(s["chunks"]):
        blob = (art / "blobs" / "sha256" / c["digest"][7:]).read_bytes()
        assert len(blob) == c["size"] and sha(blob) == c["digest"]
        out.append(decode(blob, min(s["chunk_elements"], s["numel"] - i * s["chunk_elements"]), width))
    bits = np.concatenate(out) if out else np.empty(0, UINT[width])
    assert tensor_digest(bits.tobytes(), width, s["chunk_elements"]) == s["digest"]
    return bits


@pytest.mark.parametrize("vector", VECTORS, ids=lambda p: p.name)
def test_independent_reader_reproduces_post(vector):
    art = vector / "artifact"
    data = (art / "manifest.json").read_bytes()
    assert (art / "manifest.json.sha256").read_text() == sha(data) + "\n"
    m = json.loads(data)
    assert m["format_version"] == 1
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
    for name, raw in out.items():
        assert raw == post[name][2], name
        t = next(t for t in m["tensors"] if t["name"] == name)
        assert tensor_digest(raw, WIDTH[post[name][0]], m["chunk_elements"]) == t["post"]["digest"]
    lines = [json.dumps([k, v[1], v[0], tensor_digest(v[2], WIDTH[v[0]], m["chunk_elements"])], separators=(",", ":"))
             for k, v in sorted(post.items())]
    assert sha("".join(line + "\n" for line in lines).encode()) == m["post"]["fingerprint"]
