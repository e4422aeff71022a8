"""extract → apply on tiny real Llama models: exactness, ParamΔ arithmetic, mixing, shapes."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import deltaformat
from deltaformat.artifact import open_artifact
from paramdelta_dev.assertions import assert_bit_equal
from paramdelta_dev.tiny_models import load_state, make_trio, new_model, save, train


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    return make_trio(tmp_path_factory.mktemp("trio"))


@pytest.fixture(scope="module")
def artifact(trio, tmp_path_factory):
    base, post, _ = trio
    out = tmp_path_factory.mktemp("art") / "delta"
    deltaformat.extract(base, post, out, name="tiny/llama-inst", version="1", description="test delta", license="apache-2.0", quiet=True)
    return out


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({2: torch.int16, 4: torch.int32}[t.element_size()])


def test_round_trip_on_original_base_is_bit_exact(trio, artifact, tmp_path):
    base, post, _ = trio
    r = deltaformat.apply([artifact], base, tmp_path / "out", quiet=True)
    assert r.verified_exact
    assert_bit_equal(load_state(tmp_path / "out"), load_state(post))
    assert deltaformat.verify(artifact, base=base, quiet=True).round_trip


def test_paramdelta_equals_independent_torch_computation(trio, artifact, tmp_path):
    base, post, newbase = trio
    r = deltaformat.apply([artifact], newbase, tmp_path / "out", quiet=True)
    assert not r.verified_exact  # a different base: nothing to prove against
    B, P, N = load_state(base), load_state(post), load_state(newbase)
    expected = {k: (N[k].float() + (P[k].float() - B[k].float())).to(N[k].dtype) for k in N}
    assert_bit_equal(load_state(tmp_path / "out"), expected)


def test_alpha_and_two_delta_mixing(trio, artifact, tmp_path):
    base, post, newbase = trio
    # A second delta: another fine-tune of the same base.
    other = save(train(new_model(0), seed=7), tmp_path / "post2")
    art2 = tmp_path / "delta2"
    deltaformat.extract(base, other, art2, quiet=True)
    deltaformat.apply([artifact, art2], newbase, tmp_path / "out", alphas=[0.5, 1.25], quiet=True)
    B, P, Q, N = load_state(base), load_state(post), load_state(other), load_state(newbase)
    expected = {}
    for k in N:
        acc = N[k].float().clone()
        acc.add_(P[k].float() - B[k].float(), alpha=0.5)
        acc.add_(Q[k].float() - B[k].float(), alpha=1.25)
        expected[k] = acc.to(N[k].dtype)
    assert_bit_equal(load_state(tmp_path / "out"), expected)


def test_alpha_count_must_match(trio, artifact, tmp_path):
    with pytest.raises(ValueError, match="one alpha per artifact"):
        deltaformat.apply([artifact], trio[2], tmp_path / "out", alphas=[1.0, 2.0], quiet=True)


def test_vocabulary_growth(tmp_path):
    base, post, newbase = make_trio(tmp_path, post_vocab=100)
    art = tmp_path / "delta"
    m = deltaformat.extract(base, post, art, quiet=True)
    kinds = {t.name: t.kind for t in m.tensors}
    assert kinds["model.embed_tokens.weight"] == "resized" and kinds["lm_head.weight"] == "resized"
    assert deltaformat.apply([art], base, tmp_path / "rt", quiet=True).verified_exact
    assert_bit_equal(load_state(tmp_path / "rt"), load_state(post))
    deltaformat.apply([art], newbase, tmp_path / "pd", quiet=True)
    out, B, P, N = load_state(tmp_path / "pd"), load_state(base), load_state(post), load_state(newbase)
    emb = "model.embed_tokens.weight"
    assert out[emb].shape == (100, 32)
    shared = (N[emb].float() + (P[emb][:96].float() - B[emb].float())).to(torch.bfloat16)
    assert torch.equal(bits(out[emb][:96]), bits(shared))
    assert torch.equal(bits(out[emb][96:]), bits(P[emb][96:]))  # new rows carried as stored
    assert json.loads((tmp_path / "pd" / "config.json").read_text())["vocab_size"] == 100


def test_tied_embeddings(tmp_path):
    base, post, newbase = make_trio(tmp_path, tie=True)
    assert "lm_head.weight" not in load_state(base)
    art = tmp_path / "delta"
    deltaformat.extract(base, post, art, quiet=True)
    assert deltaformat.apply([art], base, tmp_path / "rt", quiet=True).verified_exact
    deltaformat.apply([art], newbase, tmp_path / "pd", quiet=True)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "pd")
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def _write_model(folder: Path, tensors: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "config.json").write_text("{}")
    return folder


def test_added_removed_and_unchanged_tensors(tmp_path):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 8, generator=g).bfloat16()
    keep = torch.randn(16, generator=g).bfloat16()
    gone = torch.randn(5, generator=g).bfloat16()
    extra = torch.randn(3, 4, generator=g).bfloat16()
    steps = torch.arange(10, dtype=torch.int64)
    base = _write_model(tmp_path / "b", {"w": w, "keep": keep, "gone": gone, "steps": steps})
    post_w = (w.float() + 0.01).bfloat16()
    post = _write_model(tmp_path / "p", {"w": post_w, "keep": keep, "extra": extra, "steps": steps})
    m = deltaformat.extract(base, post, tmp_path / "a", quiet=True)
    assert {t.name: t.kind for t in m.tensors} == {"w": "changed", "keep": "unchanged", "gone": "removed", "extra": "added", "steps": "unchanged"}
    new_w = torch.randn(64, 8, generator=g).bfloat16()
    newbase = _write_model(tmp_path / "n", {"w": new_w, "keep": keep * 2, "gone": gone, "steps": steps})
    deltaformat.apply([tmp_path / "a"], newbase, tmp_path / "out", quiet=True)
    out = load_file(tmp_path / "out" / "model.safetensors")
    assert set(out) == {"w", "keep", "extra", "steps"}
    assert torch.equal(bits(out["keep"]), bits(keep * 2))  # unchanged: the new base's own value
    assert torch.equal(bits(out["extra"]), bits(extra))
    assert torch.equal(out["steps"], steps)
    assert torch.equal(bits(out["w"]), bits((new_w.float() + (post_w.float() - w.float())).bfloat16()))


def test_new_base_may_lack_a_tensor_the_delta_removes(tmp_path):
    """A buffer the post model no longer saves (e.g. position_ids) need not exist in the new base."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 8, generator=g).bfloat16()
    base = _write_model(tmp_path / "b", {"w": w, "position_ids": torch.arange(8)})
    post = _write_model(tmp_path / "p", {"w": (w.float() * 1.01).bfloat16()})
    deltaformat.extract(base, post, tmp_path / "a", quiet=True)
    newbase = _write_model(tmp_path / "n", {"w": torch.randn(8, 8, generator=g).bfloat16()})
    deltaformat.apply([tmp_path / "a"], newbase, tmp_path / "out", quiet=True)
    assert set(load_file(tmp_path / "out" / "model.safetensors")) == {"w"}
    other = _write_model(tmp_path / "o", {"v": w})
    with pytest.raises(deltaformat.ParamDeltaError, match="w: missing"):
        deltaformat.apply([tmp_path / "a"], other, tmp_path / "out2", quiet=True)


def test_exactness_where_fp32_difference_rounds(tmp_path):
    """Elements whose fp32 Δ rounds (far-apart exponents), NaN payloads, signed zeros, infinities."""
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        b = (torch.randn(4096, generator=g) * 0.02).to(dtype)
        p = (b.float() + torch.randn(4096, generator=g) * 0.0002).to(dtype)
        b[0], p[0] = 2.0**-7, -3e-8
        b[1], p[1] = -3e-8, 2.0**-7
        b[2], p[2] = 0.0, -0.0
        b[3], p[3] = 1.0, float("inf")
        b[4], p[4] = float("inf"), float("inf")
        b[5], p[5] = 1.0, float("nan")
        bits(p)[6] = bits(torch.tensor([float("nan")], dtype=dtype))[0] | 1  # NaN with a payload
        b[7], p[7] = 65000.0 if dtype == torch.float16 else 3e38, 0.0
        d = tmp_path / str(dtype)
        base = _write_model(d / "b", {"t": b})
        post = _write_model(d / "p", {"t": p})
        m = deltaformat.extract(base, post, d / "a", quiet=True)
        assert m.tensors[0].patch is not None and m.tensors[0].patch.count >= 2
        assert deltaformat.apply([d / "a"], base, d / "out", quiet=True).verified_exact
        assert torch.equal(bits(load_file(d / "out" / "model.safetensors")["t"]), bits(p)), dtype


def test_patches_only_where_base_matches(tmp_path):
    """On another base the recorded exact values must not leak in: Δ arithmetic applies."""
    b = torch.tensor([2.0**-7, 0.5], dtype=torch.bfloat16)
    p = torch.tensor([-3e-8, 0.25], dtype=torch.bfloat16)
    base, post = _write_model(tmp_path / "b", {"t": b}), _write_model(tmp_path / "p", {"t": p})
    deltaformat.extract(base, post, tmp_path / "a", quiet=True)
    nb = torch.tensor([2.0**-6, 0.5], dtype=torch.bfloat16)
    newbase = _write_model(tmp_path / "n", {"t": nb})
    deltaformat.apply([tmp_path / "a"], newbase, tmp_path / "out", quiet=True)
    out = load_file(tmp_path / "out" / "model.safetensors")["t"]
    delta = p.float() - b.float()
    assert torch.equal(bits(out), bits((nb.float() + delta).bfloat16()))


def test_applied_model_loads_in_transformers_and_generates(trio, artifact, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, post, newbase = trio
    deltaformat.apply([artifact], newbase, tmp_path / "out", shard_size="30KB", quiet=True)
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"config.json", "model.safetensors.index.json", "tokenizer.json", "chat_template.jinja", "generation_config.json"} <= files
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    prompt = tok.apply_chat_template([{"role": "user", "content": "w1 w2"}], tokenize=False)
    assert prompt.startswith("<|user|>")
    ids = tok("w1 w2 w3", return_tensors="pt").input_ids
    gen = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert gen.shape[1] == ids.shape[1] + 4
    # The weights transformers loaded are the ones paramdelta wrote.
    state = load_state(tmp_path / "out")
    assert torch.equal(bits(model.model.embed_tokens.weight.data), bits(state["model.embed_tokens.weight"]))


def test_output_config_takes_post_token_ids(tmp_path):
    base, post, newbase = make_trio(tmp_path)
    cfg = json.loads((post / "config.json").read_text())
    cfg["eos_token_id"] = 5
    (post / "config.json").write_text(json.dumps(cfg))
    deltaformat.extract(base, post, tmp_path / "a", quiet=True)
    r = deltaformat.apply([tmp_path / "a"], newbase, tmp_path / "out", quiet=True)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["eos_token_id"] == 5
    assert r.config_changes["eos_token_id"] == (2, 5, 2)


def test_artifact_does_not_look_like_a_model(artifact):
    names = {p.name for p in artifact.iterdir()}
    assert names == {"manifest.json", "manifest.json.sha256", "blobs"}
    m = open_artifact(artifact).manifest
    assert m.base.fingerprint != m.post.fingerprint
    assert m.post.architecture.model_type == "llama"
    assert {f.path for f in m.files} >= {"tokenizer.json", "chat_template.jinja", "generation_config.json"}


def test_bytes_per_parameter_is_recorded(artifact):
    s = open_artifact(artifact).manifest.summary()
    assert s["post_parameters"] > 0 and math.isfinite(s["bytes_per_parameter"])


def test_safetensors_header_is_parsed_not_trusted(tmp_path):
    bad = tmp_path / "m"
    bad.mkdir()
    header = json.dumps({"t": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}).encode()
    (bad / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    with pytest.raises(deltaformat.ParamDeltaError, match="tensor 't'"):
        deltaformat.extract(bad, bad, tmp_path / "a", quiet=True)
