"""Lossless size: the artifact against zstd, byte planes, ZipNN and the order-0 entropy bound on the same exact Δ."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.format.harness import rm_tree

CHUNK = 1 << 22


def _entropy_bits(counts: np.ndarray) -> float:
    """Order-0 entropy in bits per element of a histogram."""
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def _merge_counts(values: list[np.ndarray], counts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    if len(values) == 1:
        return values[0], counts[0]
    v, inv = np.unique(np.concatenate(values), return_inverse=True)
    return v, np.bincount(inv, weights=np.concatenate(counts).astype(np.float64)).astype(np.int64)


def zipnn_info() -> tuple[object | None, str | None]:
    try:
        from importlib.metadata import version

        import zipnn

        return zipnn, version("zipnn")
    except Exception:  # noqa: BLE001  (absent or broken: reported as such)
        return None, None


def delta_sizes(base: Path, post: Path) -> dict:
    """Peers on the same exact Δ = fp32(post) - fp32(base), chunk by chunk (2^22 elements, as the artifact).

    zstd-1 on the raw Δ bytes, zstd-1 on its byte planes (bytegroup-zstd), ZipNN on the exact
    fp32 Δ (lossless) and on bf16(Δ) (lossy: the published anchor), with ZipNN's round trip
    checked on every chunk; the order-0 entropy of the Δ over the whole model and per tensor.
    """
    import torch

    from bench.codec_bench import PlainZstd1
    from deltaformat.arith import difference
    from deltaformat.codec import get_codec
    from deltaformat.dtypes import DELTA_DTYPES
    from deltaformat.models import open_model

    zipnn, _ = zipnn_info()
    b, p = open_model(base), open_model(post)
    plain, planes = PlainZstd1(), get_codec("bytegroup-zstd")
    out = {"zstd_raw": 0, "zstd_planes": 0, "zipnn_f32": 0, "zipnn_bf16": 0, "zipnn_roundtrip": zipnn is not None}
    all_v, all_c, per_tensor_bits, n = [], [], 0.0, 0
    for name, pt in p.tensors.items():
        bt = b.tensors.get(name)
        if bt is None or bt.shape != pt.shape or pt.dtype not in DELTA_DTYPES:
            raise RuntimeError(f"{name}: the size bench expects same-shape floating tensors")
        tv, tc = [], []
        for s in range(0, max(pt.numel, 1), CHUNK):
            c = min(CHUNK, pt.numel - s)
            d = difference(bt.read(s, c), bt.dtype, pt.read(s, c), pt.dtype)
            out["zstd_raw"] += len(plain.encode(d))
            out["zstd_planes"] += len(planes.encode(d))
            if zipnn is not None:
                f32 = torch.from_numpy(d.view(np.float32))
                for key, t in (("zipnn_f32", f32), ("zipnn_bf16", f32.to(torch.bfloat16))):
                    z = zipnn.ZipNN(input_format="torch")
                    blob = z.compress(t)
                    out[key] += len(blob)
                    back = zipnn.ZipNN(input_format="torch").decompress(blob)
                    iv = torch.int32 if t.element_size() == 4 else torch.int16
                    if back.shape != t.shape or not torch.equal(back.reshape(-1).view(iv), t.view(iv)):
                        out["zipnn_roundtrip"] = False
            v, k = np.unique(d, return_counts=True)
            tv.append(v)
            tc.append(k)
        v, k = _merge_counts(tv, tc)
        per_tensor_bits += _entropy_bits(k) * pt.numel
        all_v.append(v)
        all_c.append(k)
        n += pt.numel
    _, k = _merge_counts(all_v, all_c)
    out["params"] = n
    out["bound_model"] = _entropy_bits(k) / 8 * n
    out["bound_tensor"] = per_tensor_bits / 8
    out["distinct"] = int(k.size)
    return out


def artifact_sizes(art: Path) -> dict:
    from deltaformat.artifact import open_artifact

    m = open_artifact(art).manifest
    tensor_blobs: dict[str, int] = {}
    for t in m.tensors:
        for s in (t.delta, t.values):
            if s is not None:
                tensor_blobs.update((c.digest, c.size) for c in s.chunks)
        if t.patch is not None:
            tensor_blobs[t.patch.digest] = t.patch.size
    total = sum(f.stat().st_size for f in art.rglob("*") if f.is_file())
    kinds: dict[str, int] = {}
    for t in m.tensors:
        kinds[t.kind] = kinds.get(t.kind, 0) + 1
    return {"tensor_bytes": sum(tensor_blobs.values()), "total_bytes": total, "codec": m.codec.delta,
            "patched": sum(t.patch.count for t in m.tensors if t.patch is not None), "kinds": kinds}


def measure_size(label: str, base: Path, post: Path, work: Path, raw_bytes_per_param: float) -> dict:
    import deltaformat

    art = work / "art"
    rm_tree(art)
    deltaformat.extract(base, post, art, quiet=True)
    row = {"label": label, "raw_bpp": raw_bytes_per_param, **artifact_sizes(art), **delta_sizes(base, post)}
    rm_tree(art)
    return row
