"""Bad input gets a clear error and loses nothing: wrong base, corruption, interruption, CLI."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import deltaformat
from deltaformat.artifact import DIGEST_FILE, MANIFEST_FILE, open_artifact
from deltaformat.digests import blob_digest, hex_of
from deltaformat.errors import CorruptBlobError, FormatError, IncompatibleBaseError, ModelError, OutputExistsError, VerificationError
from paramdelta_dev.tiny_models import make_trio, new_model, save

PARAMDELTA = [sys.executable, "-m", "deltaformat.cli"]


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    return make_trio(tmp_path_factory.mktemp("trio"))


@pytest.fixture
def artifact(trio, tmp_path):
    out = tmp_path / "delta"
    deltaformat.extract(trio[0], trio[1], out, quiet=True)
    return out


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_wrong_base_fails_preflight_with_a_list(artifact, tmp_path):
    other = save(new_model(3, vocab=80), tmp_path / "other")  # different vocabulary: shapes differ
    with pytest.raises(IncompatibleBaseError) as e:
        deltaformat.apply([artifact], other, tmp_path / "out", quiet=True)
    msg = str(e.value)
    assert "2 tensor mismatch(es)" in msg and "model.embed_tokens.weight: expected BF16[96, 32], found BF16[80, 32]" in msg
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)


def test_preflight_lists_first_few_and_counts_the_rest(artifact, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    save_file({f"t{i}": torch.zeros(1) for i in range(20)}, folder / "model.safetensors")
    with pytest.raises(IncompatibleBaseError, match=r"and \d+ more"):
        deltaformat.apply([artifact], folder, tmp_path / "out", quiet=True)


def test_verify_with_a_different_base_cannot_prove_round_trip(artifact, trio):
    with pytest.raises(VerificationError, match="not the base"):
        deltaformat.verify(artifact, base=trio[2], quiet=True)


def _first_chunk(artifact: Path):
    m = open_artifact(artifact).manifest
    t = next(t for t in m.tensors if t.delta is not None)
    return t, t.delta.chunks[0]


def test_flipped_byte_in_a_blob_names_tensor_and_blob(artifact, trio, tmp_path):
    t, chunk = _first_chunk(artifact)
    path = artifact / "blobs" / "sha256" / hex_of(chunk.digest)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    for call in (lambda: deltaformat.verify(artifact, quiet=True), lambda: deltaformat.apply([artifact], trio[2], tmp_path / "out", quiet=True)):
        with pytest.raises(CorruptBlobError) as e:
            call()
        assert repr(t.name) in str(e.value) and chunk.digest in str(e.value)
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)


def test_flipped_byte_in_the_manifest_is_detected(artifact):
    path = artifact / MANIFEST_FILE
    data = bytearray(path.read_bytes())
    i = data.index(b'"num_parameters": ') + len(b'"num_parameters": ')
    data[i] = ord("9") if data[i] != ord("9") else ord("8")
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="manifest.json is corrupt"):
        open_artifact(artifact)


def test_missing_blob_and_missing_digest_file(artifact, trio, tmp_path):
    _, chunk = _first_chunk(artifact)
    (artifact / "blobs" / "sha256" / hex_of(chunk.digest)).unlink()
    with pytest.raises(FormatError, match="blob"):
        deltaformat.apply([artifact], trio[2], tmp_path / "out", quiet=True)
    (artifact / DIGEST_FILE).unlink()
    with pytest.raises(FormatError, match="incomplete"):
        open_artifact(artifact)


def _rewrite_manifest(artifact: Path, edit) -> None:
    raw = json.loads((artifact / MANIFEST_FILE).read_text())
    edit(raw)
    data = json.dumps(raw).encode()
    (artifact / MANIFEST_FILE).write_bytes(data)
    (artifact / DIGEST_FILE).write_text(blob_digest(data) + "\n")


def test_other_format_version_is_refused(artifact):
    _rewrite_manifest(artifact, lambda m: m.update(format_version=3))  # 2 is now read too (format v2)
    with pytest.raises(FormatError, match="format_version is 3; this paramdelta reads format_version 1 and 2"):
        open_artifact(artifact)


def test_unknown_codec_and_bad_shape_are_refused(artifact, tmp_path):
    def codec(m):
        next(t for t in m["tensors"] if t["delta"])["delta"]["codec"] = "future-codec"

    _rewrite_manifest(artifact, codec)
    with pytest.raises(FormatError, match="unknown codec 'future-codec'"):
        deltaformat.verify(artifact, quiet=True)

    def shape(m):
        m["tensors"][0]["post"]["shape"] = [1 << 30, 1 << 30]

    _rewrite_manifest(artifact, shape)
    with pytest.raises(FormatError, match="over the limit"):
        open_artifact(artifact)


def test_decoded_size_is_bounded_by_the_manifest(artifact):
    """A blob that decodes to more (or fewer) elements than the manifest says is refused."""
    m = open_artifact(artifact).manifest
    t = next(t for t in m.tensors if t.delta is not None)
    c = t.delta.chunks[0]
    from deltaformat.codec import get_codec

    bomb = get_codec(t.delta.codec).encode(np.zeros(t.delta.numel * 64, dtype=np.uint32))
    (artifact / "blobs" / "sha256" / hex_of(c.digest)).unlink()
    new = artifact / "blobs" / "sha256" / hex_of(blob_digest(bomb))
    new.write_bytes(bomb)

    def point(raw):
        for e in raw["tensors"]:
            if e["name"] == t.name:
                e["delta"]["chunks"][0] = {"digest": blob_digest(bomb), "size": len(bomb)}

    _rewrite_manifest(artifact, point)
    with pytest.raises(CorruptBlobError, match="manifest says"):
        deltaformat.verify(artifact, quiet=True)


def test_no_overwrite_without_force(artifact, trio, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="--force"):
        deltaformat.apply([artifact], trio[2], tmp_path / "out", quiet=True)
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    deltaformat.apply([artifact], trio[2], tmp_path / "out", force=True, quiet=True)
    assert not (tmp_path / "out" / "keep.txt").exists()


def test_interrupted_apply_leaves_nothing(artifact, trio, tmp_path, monkeypatch):
    from deltaformat import writer

    calls = {"n": 0}
    real = writer.ShardedWriter.write

    def interrupt_midway(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(writer.ShardedWriter, "write", interrupt_midway)
    with pytest.raises(KeyboardInterrupt):
        deltaformat.apply([artifact], trio[2], tmp_path / "out", quiet=True)
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)


def test_sigterm_during_extract_leaves_nothing(tmp_path):
    """A real process, killed while writing: no artifact and no temporary folder survive."""
    g = torch.Generator().manual_seed(0)
    base = {f"t{i}": torch.randn(1 << 20, generator=g).bfloat16() for i in range(24)}
    post = {k: (v.float() + 1e-3).bfloat16() for k, v in base.items()}
    for name, tensors in (("b", base), ("p", post)):
        (tmp_path / name).mkdir()
        save_file(tensors, tmp_path / name / "model.safetensors")
    env = {**os.environ, "PARAMDELTA_WORKERS": "1"}
    proc = subprocess.Popen([*PARAMDELTA, "extract", "--base", str(tmp_path / "b"), "--post", str(tmp_path / "p"),
                             "--out", str(tmp_path / "a"), "-q"], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not any(p.name.startswith(".a.tmp-") and any((p / "blobs" / "sha256").glob("*")) for p in tmp_path.iterdir()):
        assert time.time() < deadline and proc.poll() is None, "extract finished before it could be interrupted"
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "p"]


def test_bad_name_is_refused_before_any_work(trio, tmp_path, monkeypatch):
    ex = importlib.import_module("deltaformat.extract")  # the module, not the function of that name

    monkeypatch.setattr(ex, "open_model", lambda *_: pytest.fail("models were opened before the name was checked"))
    with pytest.raises(ValueError, match="must be NS/NAME"):
        deltaformat.extract(trio[0], trio[1], tmp_path / "a", name="Bench-Transfer", quiet=True)
    assert not (tmp_path / "a").exists()


def test_pickled_weights_are_refused(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(ModelError, match="never unpickles"):
        deltaformat.extract(tmp_path / "m", tmp_path / "m", tmp_path / "a", quiet=True)


def test_cli_exit_codes_and_one_line_errors(artifact, trio, tmp_path):
    ok = subprocess.run([*PARAMDELTA, "inspect", str(artifact), "--json"], capture_output=True, text=True)
    assert ok.returncode == 0 and json.loads(ok.stdout)["kinds"]["changed"] > 0
    ok = subprocess.run([*PARAMDELTA, "verify", str(artifact), "--base", str(trio[0]), "-q"], capture_output=True, text=True)
    assert ok.returncode == 0 and "bit for bit" in ok.stdout
    bad = subprocess.run([*PARAMDELTA, "apply", str(artifact), "--base", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "-q"],
                         capture_output=True, text=True)
    assert bad.returncode != 0
    assert bad.stderr.strip().count("\n") == 0 and bad.stderr.startswith("paramdelta: error:") and "nope" in bad.stderr
    notart = subprocess.run([*PARAMDELTA, "inspect", str(trio[1])], capture_output=True, text=True)
    assert notart.returncode != 0 and "looks like a model folder" in notart.stderr


def test_hub_id_resolves_offline_from_the_hf_cache(trio, tmp_path, monkeypatch):
    """A Hub id read through huggingface_hub's real cache with HF_HUB_OFFLINE=1; the commit is recorded."""
    cache = tmp_path / "hub"
    commits = {}
    for name, folder in (("base", trio[0]), ("post", trio[1])):
        commit = f"{len(name):02d}".ljust(40, "a")
        repo = cache / f"models--tiny--{name}"
        shutil.copytree(folder, repo / "snapshots" / commit)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(commit)
        commits[name] = commit
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    m = deltaformat.extract("tiny/base", "tiny/post", tmp_path / "a", quiet=True)
    assert (m.base.id, m.base.source, m.base.commit) == ("tiny/base", "hub", commits["base"])
    assert m.post.commit == commits["post"]
    with pytest.raises(ModelError, match="not in the Hugging Face cache"):
        deltaformat.extract("tiny/absent", "tiny/post", tmp_path / "b", quiet=True)
