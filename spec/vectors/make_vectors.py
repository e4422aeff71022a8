"""Regenerate the test vectors: ``python spec/vectors/make_vectors.py``.

Each vector is a folder with base/ and post/ (tiny safetensors models), artifact/ (what
paramdelta extract writes for them) and expected.json (the digests an independent
reader must reproduce). Inputs are deterministic; only created_at varies between runs.
``v1-*`` vectors are format v1, ``v2-*`` format v2; ``v2-lossy-*`` also hold decoded/,
the reference decoder's Δ of every lossy tensor (fp32 safetensors), which a reader
reproduces bit for bit (within binary32 rounding of the binary64 product for
``lowrank-bf16-v1``). ``python spec/vectors/make_vectors.py v2-basic`` rewrites one vector.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

import deltaformat
from deltaformat.digests import chunk_hash, tensor_digest

HERE = Path(__file__).resolve().parent


def _vectors() -> dict[str, tuple[dict, dict, str]]:
    """name -> (base tensors, post tensors, delta codec id)."""
    g = torch.Generator().manual_seed(2504)
    w = (torch.randn(8, 6, generator=g) * 0.02).bfloat16()
    post_w = (w.float() + torch.randn(8, 6, generator=g) * 0.0002).bfloat16()
    post_w[0, 0], w[0, 0] = -3e-8, 2.0**-7  # fp32 Δ rounds here: needs the patch
    emb = (torch.randn(5, 4, generator=g) * 0.02).to(torch.float16)
    post_emb = torch.cat([(emb.float() + 0.001).half(), (torch.randn(2, 4, generator=g) * 0.02).half()])
    norm = torch.ones(6, dtype=torch.float32)
    basic = (
        {"w": w, "emb": emb, "norm": norm, "old": torch.zeros(3, dtype=torch.bfloat16), "ids": torch.arange(4)},
        {"w": post_w, "emb": post_emb, "norm": norm * 1.5, "new": torch.full((2, 2), 0.5, dtype=torch.bfloat16), "ids": torch.arange(4)},
    )
    empty = ({"e": torch.zeros(0, 4, dtype=torch.bfloat16)}, {"e": torch.zeros(0, 4, dtype=torch.bfloat16)})
    # rank-zstd-v1 in its table mode (dense small Δ) and bitmap mode (a sparse fine-tune).
    dense = (torch.randn(96, 128, generator=g) * 0.02).bfloat16()
    dense_post = (dense.float() + torch.randn(96, 128, generator=g) * 0.02 * 0.009).bfloat16()
    sparse = (torch.randn(64, 128, generator=g) * 0.02).bfloat16()
    sparse_post = sparse.clone()
    rows = torch.arange(0, 64, 5)
    sparse_post[rows] = (sparse[rows].float() + 0.0005).bfloat16()
    rank = ({"dense": dense, "sparse": sparse}, {"dense": dense_post, "sparse": sparse_post})
    vectors = {"v1-basic": (*basic, "bytegroup-zstd"), "v1-empty": (*empty, "bytegroup-zstd"), "v1-rank": (*rank, "rank-zstd-v1"),
               "v2-basic": (*basic, "rank-zstd-v1")}
    # lossy: a dense matrix, one whose size is no multiple of any group, rows never touched, and a vector
    odd = torch.randn(7, 13, generator=g) * 0.01
    odd_post = odd + torch.randn(7, 13, generator=g) * 0.001
    odd_post[0, :5] = odd[0, :5]  # some zero Δ
    half = (torch.randn(16, 40, generator=g) * 0.02).bfloat16()
    half_post = half.clone()
    half_post[::3] = (half[::3].float() + torch.randn(6, 40, generator=g) * 0.001).bfloat16()
    lossy = ({"dense": dense, "odd": odd, "rows": half, "norm": norm},
             {"dense": dense_post, "odd": odd_post, "rows": half_post, "norm": norm * 1.25})
    for preset in LOSSY_VECTORS:
        vectors[f"v2-lossy-{preset}"] = (*lossy, "rank-zstd-v1")
    return vectors


LOSSY_VECTORS = ("bf16", "q4", "q2", "sign", "lowrank")
CARRIED = {"generation_config.json": '{"bos_token_id": 1, "eos_token_id": 2}\n'}  # v2 stores it as a zstd frame


def _write(folder: Path, tensors: dict, carried: dict[str, str] | None = None) -> None:
    folder.mkdir(parents=True)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "config.json").write_text('{"model_type": "vector"}\n')
    for rel, text in (carried or {}).items():
        (folder / rel).write_text(text)


def _decoded(artifact: Path, folder: Path) -> None:
    """The reference decoder's Δ of every lossy tensor, as fp32 safetensors."""
    import numpy as np

    from deltaformat.engine import stream_range
    from deltaformat.artifact import open_artifact

    art = open_artifact(artifact)
    out = {t.name: torch.from_numpy(stream_range(art, t.delta, 0, t.delta.numel, t.name).view(np.float32).copy())
           for t in art.manifest.tensors if t.delta is not None and t.delta.lossy is not None}
    folder.mkdir(parents=True)
    save_file(out, folder / "model.safetensors", metadata={"format": "pt"})


def _digest(t: torch.Tensor) -> str:
    raw = t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return tensor_digest([chunk_hash(raw)])


def main(names: list[str]) -> int:
    for name, (base, post, codec) in _vectors().items():
        if names and name not in names:
            continue
        root = HERE / name
        shutil.rmtree(root, ignore_errors=True)
        version = 1 if name.startswith("v1-") else 2
        lossy = name.removeprefix("v2-lossy-") if name.startswith("v2-lossy-") else None
        _write(root / "base", base)
        _write(root / "post", post, CARRIED if version == 2 else None)
        m = deltaformat.extract(root / "base", root / "post", root / "artifact", quiet=True, workers=1, delta_codec=codec,
                                format_version=version, lossy=lossy)
        if lossy:
            _decoded(root / "artifact", root / "decoded")
        expected = {
            "kinds": {t.name: t.kind for t in m.tensors},
            "post_digests": {k: _digest(v) for k, v in post.items()},
            "base_fingerprint": m.base.fingerprint,
            "post_fingerprint": m.post.fingerprint,
            "patched_elements": sum(t.patch.count for t in m.tensors if t.patch),
        }
        (root / "expected.json").write_text(json.dumps(expected, indent=2, sort_keys=True) + "\n")
        print(f"wrote {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
