"""export-lora: a delta artifact as a PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors).

Why: vLLM and most serving stacks serve many LoRA adapters on one base, not dense deltas.
Each Linear weight's Δ (decoded from the artifact, exact or lossy) is replaced by its best
rank-r approximation in the Frobenius norm (truncated SVD, Eckart–Young): B = U_r·√Σ_r,
A = √Σ_r·V_rᵀ, with ``lora_alpha = r`` so PEFT's scaling alpha/r is 1 and the adapter adds
exactly B·A. A weight with fewer than r singular values gets zero rows/columns (PEFT
wants one r); the product is unchanged.

Left out, and said so in the output's ``paramdelta_lora.json`` and by the CLI: a LoRA
adapter holds only low-rank updates of Linear weights, so embeddings (``*embed*``,
``wte``, ``wpe``: PEFT's embedding LoRA has another layout), vectors (norms, biases),
tensors of other ranks, and added, resized or removed tensors are not in it; their Δ is
lost when the adapter is used instead of the delta. ``captured`` is the share of the
whole ‖Δ‖² the adapter keeps.

No torch or peft is needed to write the adapter (numpy, and the format's own safetensors
writer); ``peft`` loads it (the ``peft`` extra).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deltaformat.apply import open_any
from deltaformat.artifact import Artifact
from deltaformat.engine import stream_range
from deltaformat.fsutil import atomic_folder
from deltaformat.manifest import TensorEntry, TensorInfo
from deltaformat.progress import progress
from deltaformat.writer import plan_shards

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
EXPORT_RECORD = "paramdelta_lora.json"
MAX_RANK = 4096
_EMBEDDING = re.compile(r"(^|[._])(embed[a-z_]*|wte|wpe)([._]|$)")


@dataclass
class LoraExport:
    out: Path
    rank: int
    targets: int
    bytes: int
    captured: float  # share of ‖Δ‖² (all Δ tensors) the adapter holds
    left_out: dict[str, list[str]] = field(default_factory=dict)

    def left_out_summary(self) -> str:
        parts = [f"{len(v)} {k}" for k, v in self.left_out.items() if v]
        return ", ".join(parts) or "nothing"


def _post(e: TensorEntry) -> TensorInfo:
    """The post tensor of a changed entry (the manifest's validation makes it present)."""
    assert e.post is not None, f"tensor {e.name!r} of kind {e.kind!r} has no post"
    return e.post


def lora_target(e: TensorEntry) -> str | None:
    """Why ``e`` is not a LoRA target (a category of ``LoraExport.left_out``), or None when it is one."""
    if e.kind in ("unchanged", "removed"):
        return "unchanged" if e.kind == "unchanged" else "removed"
    if e.kind != "changed":
        return "added or resized"
    shape = _post(e).shape
    if len(shape) != 2 or not e.name.endswith(".weight"):
        return "vectors and other tensors" if len(shape) < 2 else "tensors of other shapes"
    if _EMBEDDING.search(e.name):
        return "embeddings"
    return None


def export_lora(artifact: str | os.PathLike[str] | Artifact, out: str | os.PathLike[str], *, rank: int, force: bool = False,
                quiet: bool = False) -> LoraExport:
    """Write the rank-``rank`` LoRA adapter of ``artifact``'s Linear weight deltas to folder ``out``."""
    if not 1 <= rank <= MAX_RANK:
        raise ValueError(f"--rank {rank} outside 1..{MAX_RANK}")
    art = open_any(artifact, quiet=quiet)
    m = art.manifest
    targets: list[TensorEntry] = []
    left_out: dict[str, list[str]] = {}
    for e in m.tensors:
        why = lora_target(e)
        if why is None:
            targets.append(e)
        elif why not in ("unchanged", "removed"):
            left_out.setdefault(why, []).append(e.name)
    if not targets:
        raise ValueError(f"{art.location}: no changed 2-D Linear weight to export as LoRA")
    target_names = {e.name for e in targets}
    total_sq = kept_sq = 0.0
    factors: dict[str, np.ndarray] = {}
    with progress(sum(_post(e).numel for e in targets), "export-lora", quiet) as bar:
        for e in m.tensors:
            if e.delta is None:
                continue
            d = stream_range(art, e.delta, 0, e.delta.numel, e.name).view(np.float32)
            sq = float(d.astype(np.float64) @ d.astype(np.float64))
            total_sq += sq
            if e.name not in target_names:
                continue
            post = _post(e)
            b, a, kept = low_rank(d.reshape(post.shape), rank)
            kept_sq += kept
            module = e.name[: -len(".weight")]
            factors[f"base_model.model.{module}.lora_A.weight"] = a
            factors[f"base_model.model.{module}.lora_B.weight"] = b
            bar.update(post.numel)
    with atomic_folder(out, force=force) as tmp:
        nbytes = _write_safetensors(tmp / ADAPTER_WEIGHTS, factors)
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(adapter_config(art, rank, [e.name[:-7] for e in targets]), indent=2) + "\n")
        record = {"artifact": art.location, "manifest_digest": art.digest, "exact_delta": not m.is_lossy,
                  "rank": rank, "captured_energy": kept_sq / total_sq if total_sq else 1.0, "left_out": left_out}
        (tmp / EXPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return LoraExport(Path(out), rank, len(targets), nbytes, kept_sq / total_sq if total_sq else 1.0, left_out)


def low_rank(delta: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(B, A, ‖B·A‖²): the best rank-``rank`` factors of ``delta`` (out × in), zero-padded to ``rank``."""
    u, s, vt = np.linalg.svd(delta.astype(np.float64), full_matrices=False)
    k = min(rank, s.size)
    root = np.sqrt(s[:k])
    b = np.zeros((delta.shape[0], rank), np.float32)
    a = np.zeros((rank, delta.shape[1]), np.float32)
    b[:, :k] = u[:, :k] * root
    a[:k] = vt[:k] * root[:, None]
    return b, a, float(np.sum(s[:k] ** 2))


def adapter_config(art: Artifact, rank: int, modules: list[str]) -> dict[str, Any]:
    """PEFT's LoraConfig as saved by ``save_pretrained``: the base named by id and pinned revision."""
    base = art.manifest.base
    return {
        "peft_type": "LORA", "task_type": None, "r": rank, "lora_alpha": rank, "lora_dropout": 0.0,
        "target_modules": sorted(modules), "bias": "none", "fan_in_fan_out": False, "modules_to_save": None,
        "init_lora_weights": True, "inference_mode": True, "use_rslora": False, "use_dora": False,
        "base_model_name_or_path": base.id, "revision": base.commit or base.revision,
    }


def _write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> int:
    """One safetensors file of float32 tensors, laid out by the format's own shard planner."""
    names = sorted(tensors)
    (plan,) = plan_shards([(n, "F32", list(tensors[n].shape)) for n in names], 1 << 62)
    with open(path, "xb") as f:
        f.write(plan.head)
        for n in names:
            f.write(np.ascontiguousarray(tensors[n], dtype="<f4").tobytes())
    return plan.size


__all__ = ["export_lora", "LoraExport", "low_rank", "lora_target"]
