"""The benchmark's artifact: synthetic bf16 models in the Llama layout, extracted once and reused."""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.registry_perf.config import FULL_MODEL, NS, QUICK_MODEL, REL, WORK
from paramdelta_dev.llama import llama_config, llama_shapes


def save_model(folder: Path, tensors: dict, cfg: dict) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))


def ensure_artifact(quick: bool) -> tuple[Path, Path, Path, float]:
    """(base, wrong base, artifact) folders, made once and reused; and the seconds spent making them."""
    import torch

    import deltaformat

    shape = QUICK_MODEL if quick else FULL_MODEL
    key = f"L{shape['layers']}-V{shape['vocab']}-H{shape['hidden']}-rel{REL}"
    root = WORK / key
    base, post, wrong, art = root / "base", root / "post", root / "wrong-base", root / "artifact"
    if (art / "manifest.json.sha256").exists() and (wrong / "config.json").exists():
        return base, wrong, art, 0.0
    t0 = time.perf_counter()
    print(f"making the synthetic models and artifact under {root} (once) ...", file=sys.stderr)
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": shape["hidden"],
           "intermediate_size": shape["ffn"], "num_hidden_layers": shape["layers"], "vocab_size": shape["vocab"],
           "torch_dtype": "bfloat16"}
    g_base, g_post = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    b_sd, p_sd = {}, {}
    layout = llama_config(hidden=shape["hidden"], intermediate=shape["ffn"], layers=shape["layers"], vocab=shape["vocab"],
                          heads=shape["hidden"] // 64)
    for name, s in llama_shapes(layout):
        if len(s) == 1:
            b = torch.ones(s)
            p = b + torch.randn(s, generator=g_post) * 0.01
        else:
            b = torch.randn(s, generator=g_base) * 0.02
            p = b + torch.randn(s, generator=g_post) * (0.02 * REL)
        b_sd[name], p_sd[name] = b.to(torch.bfloat16), p.to(torch.bfloat16)
    save_model(base, b_sd, cfg)
    save_model(post, p_sd, cfg)
    # A base the delta does not fit: one layer fewer, and a different vocabulary size.
    wrong_sd = {n: t[:-8].clone() if n.endswith(("embed_tokens.weight", "lm_head.weight")) else t
                for n, t in b_sd.items() if f"layers.{shape['layers'] - 1}." not in n}
    save_model(wrong, wrong_sd, {**cfg, "num_hidden_layers": shape["layers"] - 1, "vocab_size": shape["vocab"] - 8})
    del b_sd, p_sd, wrong_sd
    deltaformat.extract(base, post, art, name=f"{NS}/synthetic", version="1.0", force=True, quiet=True,
                        description="synthetic bf16 stand-in for the registry benchmark")
    shutil.rmtree(post)  # only base (for pre-flight) and the artifact are needed from now on
    return base, wrong, art, time.perf_counter() - t0


@dataclass
class Blob:
    digest: str
    size: int
    path: Path

    @property
    def hex(self) -> str:
        return self.digest.removeprefix("sha256:")


@dataclass
class Art:
    folder: Path
    blobs: list[Blob]  # manifest.json first, then the layers: exactly what push uploads
    oci_bytes: bytes
    manifest_bytes: bytes
    params: int

    @property
    def total(self) -> int:
        return sum(b.size for b in self.blobs)


def load_art(folder: Path) -> Art:
    from deltaformat.artifact import MANIFEST_FILE, blob_path, open_artifact
    from deltaformat.oci import build_oci_manifest, parse_oci_manifest, sha256_digest

    a = open_artifact(folder)
    oci = build_oci_manifest(a.manifest, a.manifest_bytes)
    blobs = [Blob(sha256_digest(a.manifest_bytes), len(a.manifest_bytes), folder / MANIFEST_FILE)]
    blobs += [Blob(d.digest, d.size, blob_path(a.blob_dir, d.digest)) for d in parse_oci_manifest(oci).layers]
    return Art(folder, blobs, oci, a.manifest_bytes, a.manifest.summary()["post_parameters"])
