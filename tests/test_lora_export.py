"""export-lora: PEFT loads the adapter onto the original base and onto a new base, and its
outputs are those of the base plus the dense rank-r delta B·A."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import deltaformat
from deltaformat.artifact import open_artifact
from deltaformat.engine import stream_range
from deltaformat.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, EXPORT_RECORD, export_lora, low_rank

peft = pytest.importorskip("peft")
PARAMDELTA = [sys.executable, "-m", "deltaformat.cli"]
IDS = torch.tensor([[5, 17, 33, 60, 2, 41, 9, 80]])


def load(folder: Path):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def adapter(artifacts, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lora") / "adapter"
    proc = subprocess.run([*PARAMDELTA, "export-lora", str(artifacts.delta), "--rank", "4", "--out", str(out), "-q"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "LoRA rank 4" in proc.stdout and "left out: 1 embeddings" in proc.stdout
    return out


def dense_low_rank_model(base_folder: Path, artifact: Path, rank: int):
    """The base with W + B·A written into every exported Linear weight (no peft involved)."""
    model = load(base_folder)
    art = open_artifact(artifact)
    state = model.state_dict()
    for t in art.manifest.tensors:
        if t.delta is None or len(t.post.shape) != 2 or "embed" in t.name:
            continue
        d = stream_range(art, t.delta, 0, t.delta.numel, t.name).view(np.float32).reshape(t.post.shape)
        b, a, _ = low_rank(d, rank)
        state[t.name] += torch.from_numpy(b @ a)
    model.load_state_dict(state)
    return model


def test_adapter_config_names_the_base_and_the_targets(adapter, artifacts):
    cfg = json.loads((adapter / ADAPTER_CONFIG).read_text())
    m = open_artifact(artifacts.delta).manifest
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["lora_alpha"] == 4
    assert cfg["base_model_name_or_path"] == m.base.id and "revision" in cfg
    assert "model.layers.0.self_attn.q_proj" in cfg["target_modules"]
    assert not any("embed" in t or "norm" in t for t in cfg["target_modules"])
    record = json.loads((adapter / EXPORT_RECORD).read_text())
    assert record["left_out"]["embeddings"] == ["model.embed_tokens.weight"] and 0 < record["captured_energy"] < 1
    assert (adapter / ADAPTER_WEIGHTS).stat().st_size > 0


@pytest.mark.parametrize("which", ["base", "newbase"])
def test_peft_loads_the_adapter_and_matches_the_dense_low_rank_delta(adapter, artifacts, which):
    from peft import PeftModel

    base_folder = getattr(artifacts, which)
    with_adapter = PeftModel.from_pretrained(load(base_folder), adapter).eval()
    want = dense_low_rank_model(base_folder, artifacts.delta, 4)
    plain = load(base_folder)
    with torch.no_grad():
        got, ref, before = (m(input_ids=IDS).logits for m in (with_adapter, want, plain))
    assert torch.allclose(got, ref, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(got, before, atol=1e-4)  # the adapter does change the model


def test_full_rank_export_captures_every_linear_delta(artifacts, tmp_path):
    r = export_lora(artifacts.delta, tmp_path / "full", rank=64, quiet=True)  # >= every dimension of the tiny model
    record = json.loads((tmp_path / "full" / EXPORT_RECORD).read_text())
    assert r.targets == len(json.loads((tmp_path / "full" / ADAPTER_CONFIG).read_text())["target_modules"])
    m = open_artifact(artifacts.delta).manifest
    left = [t for t in m.tensors if t.delta is not None and t.name in sum(record["left_out"].values(), [])]
    art = open_artifact(artifacts.delta)
    total = sum(float(np.sum(stream_range(art, t.delta, 0, t.delta.numel, t.name).view(np.float32).astype(np.float64) ** 2))
                for t in m.tensors if t.delta is not None)
    lost = sum(float(np.sum(stream_range(art, t.delta, 0, t.delta.numel, t.name).view(np.float32).astype(np.float64) ** 2))
               for t in left)
    assert r.captured == pytest.approx(1 - lost / total, rel=1e-6)


def test_a_lossy_artifact_exports_too_and_says_so(artifacts, tmp_path):
    deltaformat.extract(artifacts.base, artifacts.post, tmp_path / "q4", lossy="q4", quiet=True)
    export_lora(tmp_path / "q4", tmp_path / "adapter", rank=2, quiet=True)
    assert json.loads((tmp_path / "adapter" / EXPORT_RECORD).read_text())["exact_delta"] is False


def test_bad_rank_is_refused(artifacts, tmp_path):
    with pytest.raises(ValueError, match="--rank 0"):
        export_lora(artifacts.delta, tmp_path / "x", rank=0, quiet=True)
    assert not (tmp_path / "x").exists()
