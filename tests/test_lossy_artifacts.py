"""Lossy artifacts (format v2) end to end: extract --lossy, inspect, verify, apply, and v1 on request.

The rule these tests hold: a lossy artifact is never reported exact, by any verb or record,
and a reader cannot be made to read a lossy blob as an exact one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import deltaformat
from deltaformat.arith import difference
from deltaformat.artifact import DIGEST_FILE, MANIFEST_FILE, open_artifact
from deltaformat.digests import blob_digest
from deltaformat.engine import stream_range
from deltaformat.errors import ModelError
from deltaformat.lossy import PRESETS
from deltaformat.models import open_model
from paramdelta_dev.tiny_models import load_state

PARAMDELTA = [sys.executable, "-m", "deltaformat.cli"]


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*PARAMDELTA, *map(str, args)], capture_output=True, text=True, env={**os.environ, "PARAMDELTA_DEBUG": ""})


@pytest.fixture(scope="module")
def lossy(artifacts, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lossy")
    out = {}
    for preset in PRESETS:
        out[preset] = root / preset
        deltaformat.extract(artifacts.base, artifacts.post, out[preset], lossy=preset, quiet=True)
    return out


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_changed_delta_is_marked_lossy_with_honest_errors(artifacts, lossy, preset):
    art = open_artifact(lossy[preset])
    m = art.manifest
    assert m.format_version == 2 and m.exact is False and m.lossy_preset == preset and m.is_lossy
    base, post = open_model(artifacts.base), open_model(artifacts.post)
    for t in m.tensors:
        assert t.values is None or t.values.lossy is None
        if t.delta is None:
            continue
        assert t.delta.lossy is not None and t.patch is None and t.delta.digest is None
        b, p = base.tensors[t.name], post.tensors[t.name]
        exact = difference(b.read(0, b.numel), b.dtype, p.read(0, p.numel), p.dtype).view(np.float32).astype(np.float64)
        got = stream_range(art, t.delta, 0, t.delta.numel, t.name).view(np.float32).astype(np.float64)
        err = got - exact
        assert t.delta.lossy.max_abs_error == pytest.approx(np.abs(err).max(), rel=1e-9, abs=1e-30)
        assert t.delta.lossy.delta_frobenius_norm == pytest.approx(np.linalg.norm(exact), rel=1e-9)
        assert t.delta.lossy.rel_frobenius_error == pytest.approx(np.linalg.norm(err) / np.linalg.norm(exact), rel=1e-6)


def test_smaller_presets_store_fewer_bytes_than_the_exact_delta(artifacts, lossy):
    exact = open_artifact(artifacts.delta).manifest.summary()["bytes_per_parameter"]
    sizes = {p: open_artifact(lossy[p]).manifest.summary()["bytes_per_parameter"] for p in PRESETS}
    assert sizes["q4"] < exact and sizes["q2"] < sizes["q4"] and sizes["small"] < sizes["q2"]


def test_inspect_verify_and_apply_say_lossy_never_exact(artifacts, lossy, tmp_path):
    art = lossy["small"]
    shown = cli("inspect", art)
    assert shown.returncode == 0 and "LOSSY (preset small)" in shown.stdout and "lossless" not in shown.stdout
    info = json.loads(cli("inspect", art, "--json").stdout)
    assert info["exact"] is False and info["lossy_preset"] == "small" and info["lossy_tensors"]
    checked = cli("verify", art, "--base", artifacts.base, "-q")
    assert checked.returncode == 0, checked.stderr
    assert "not bit-exact" in checked.stdout and "bit for bit" not in checked.stdout and "the base is the original" in checked.stdout
    report = deltaformat.verify(art, base=artifacts.base, quiet=True)
    assert report.round_trip is False and report.lossy["preset"] == "small" and report.base_is_original
    applied = cli("apply", art, "--base", artifacts.base, "--out", tmp_path / "out", "-q")
    assert applied.returncode == 0, applied.stderr
    assert "lossy delta (preset small), not bit-exact: max abs error" in applied.stdout and "verified bit-exact" not in applied.stdout
    record = json.loads((tmp_path / "out" / "paramdelta.json").read_text())
    assert record["verified_exact"] is False and record["deltas"][0]["lossy"]["preset"] == "small"
    assert record["deltas"][0]["lossy"]["max_abs_error"] == open_artifact(art).manifest.lossy_errors()["max_abs_error"]


def test_verify_on_another_base_says_it_is_not_the_original(artifacts, lossy):
    proc = cli("verify", lossy["q4"], "--base", artifacts.newbase, "-q")
    assert proc.returncode != 0 and "is not the base this delta was extracted from" in proc.stderr


def test_lossy_apply_on_a_new_base_is_base_plus_decoded_delta(artifacts, lossy, tmp_path):
    art = open_artifact(lossy["q4"])
    deltaformat.apply([art], artifacts.newbase, tmp_path / "out", quiet=True)
    out, newbase = load_state(tmp_path / "out"), load_state(artifacts.newbase)
    for t in art.manifest.tensors:
        if t.delta is None:
            continue
        d = stream_range(art, t.delta, 0, t.delta.numel, t.name).view(np.float32)
        want = (newbase[t.name].float().numpy().reshape(-1) + d)
        got = out[t.name].float().numpy().reshape(-1)
        assert np.allclose(got, want, rtol=2.0**-7, atol=0)  # bf16 rounding of the sum


def test_a_lossy_stream_cannot_be_passed_off_as_exact(lossy, tmp_path):
    import shutil

    shutil.copytree(lossy["q4"], tmp_path / "forged")
    raw = json.loads((tmp_path / "forged" / MANIFEST_FILE).read_bytes())
    raw["exact"], raw["lossy_preset"] = True, None
    for t in raw["tensors"]:
        if t.get("delta"):
            t["delta"].pop("lossy", None)
    data = json.dumps(raw).encode()
    (tmp_path / "forged" / MANIFEST_FILE).write_bytes(data)
    (tmp_path / "forged" / DIGEST_FILE).write_text(blob_digest(data) + "\n")
    proc = cli("verify", tmp_path / "forged", "-q")
    assert proc.returncode != 0 and "is lossy but the stream is not marked lossy" in proc.stderr


def test_format_v1_on_request_and_never_lossy(artifacts, tmp_path):
    m = deltaformat.extract(artifacts.base, artifacts.post, tmp_path / "v1", format_version=1, quiet=True)
    raw = json.loads((tmp_path / "v1" / MANIFEST_FILE).read_bytes())
    assert raw["format_version"] == 1 and "exact" not in raw and "lossy_preset" not in raw
    assert all("digest" in t["delta"] and "lossy" not in t["delta"] for t in raw["tensors"] if t["delta"])
    assert all(set(f) == {"path", "digest", "size"} for f in raw["files"])
    assert m.format_version == 1 and m.exact is None
    assert deltaformat.verify(tmp_path / "v1", base=artifacts.base, quiet=True).round_trip
    proc = cli("extract", "--base", artifacts.base, "--post", artifacts.post, "--out", tmp_path / "x",
               "--lossy", "q4", "--format-version", "1", "-q")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "needs format version 2" in proc.stderr


def test_v2_exact_is_smaller_than_v1_and_still_proven(artifacts, tmp_path):
    deltaformat.extract(artifacts.base, artifacts.post, tmp_path / "v1", format_version=1, quiet=True)
    v1, v2 = open_artifact(tmp_path / "v1").manifest, open_artifact(artifacts.delta).manifest
    assert v2.exact is True and v2.stored_bytes() < v1.stored_bytes()  # carried files compressed
    assert sum(f.size for f in v2.files) < sum(f.content_size for f in v2.files)
    assert deltaformat.verify(artifacts.delta, base=artifacts.base, quiet=True).round_trip
    deltaformat.apply([artifacts.delta], artifacts.base, tmp_path / "out", quiet=True)
    for f in v2.files:  # written decompressed, as the post model had them
        assert (tmp_path / "out" / f.path).read_bytes() == (artifacts.post / f.path).read_bytes()


def test_unknown_preset_is_a_one_line_usage_error(artifacts, tmp_path):
    proc = cli("extract", "--base", artifacts.base, "--post", artifacts.post, "--out", tmp_path / "x", "--lossy", "tiny", "-q")
    assert proc.returncode == 2 and "unknown lossy preset 'tiny'" in proc.stderr and proc.stderr.count("\n") == 1
    assert not (tmp_path / "x").exists()


def _model(folder: Path, tensors: dict[str, np.ndarray]) -> Path:
    folder.mkdir()
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text("{}")
    return folder


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_delta_is_refused_by_lossy_extract_naming_the_tensor(tmp_path, bad):
    w = np.zeros((4, 8), np.float32)
    post = w.copy()
    post[1, 2] = bad
    base_dir, post_dir = _model(tmp_path / "b", {"w": w}), _model(tmp_path / "p", {"w": post})
    with pytest.raises(ModelError, match="tensor 'w': .*NaN or infinite"):
        deltaformat.extract(base_dir, post_dir, tmp_path / "a", lossy="q8", quiet=True)
    assert not (tmp_path / "a").exists()
    deltaformat.extract(base_dir, post_dir, tmp_path / "exact", quiet=True)  # the exact codec stores it
    assert deltaformat.verify(tmp_path / "exact", base=base_dir, quiet=True).round_trip


def test_resized_and_added_tensors_stay_exact_in_a_lossy_delta(tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((6, 8)).astype(np.float32)
    post_emb = np.concatenate([emb + 1e-3, rng.standard_normal((2, 8)).astype(np.float32)])
    base_dir = _model(tmp_path / "b", {"emb": emb})
    post_dir = _model(tmp_path / "p", {"emb": post_emb, "new": np.ones(5, np.float32)})
    m = deltaformat.extract(base_dir, post_dir, tmp_path / "a", lossy="sign", quiet=True)
    kinds = {t.name: t for t in m.tensors}
    assert kinds["emb"].kind == "resized" and kinds["emb"].delta.lossy is not None and kinds["emb"].values.lossy is None
    deltaformat.apply([tmp_path / "a"], base_dir, tmp_path / "out", quiet=True)
    from safetensors.numpy import load_file

    out = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert np.array_equal(out["emb"][6:], post_emb[6:]) and np.array_equal(out["new"], np.ones(5, np.float32))
    assert np.allclose(out["emb"][:6], post_emb[:6], atol=2e-3)
