"""spec/ stays true: the committed JSON Schema matches the models; test vectors decode."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from safetensors.torch import load_file

import deltaformat
from deltaformat.digests import chunk_hash, tensor_digest
from deltaformat.schema import SCHEMA_PATH, manifest_schema

VECTORS = sorted(p for p in (Path(__file__).resolve().parent.parent / "spec" / "vectors").iterdir() if p.is_dir())
EXACT_VECTORS = [p for p in VECTORS if not p.name.startswith("v2-lossy-")]  # lossy vectors: see the last test


def test_committed_schema_matches_the_models():
    assert SCHEMA_PATH.read_text() == manifest_schema(), "run `python -m deltaformat.schema` and commit spec/manifest.schema.json"


@pytest.mark.parametrize("vector", VECTORS, ids=lambda p: p.name)
def test_vector_manifest_validates_against_schema(vector):
    manifest = json.loads((vector / "artifact" / "manifest.json").read_text())
    jsonschema.validate(manifest, json.loads(SCHEMA_PATH.read_text()))


@pytest.mark.parametrize("vector", EXACT_VECTORS, ids=lambda p: p.name)
def test_vector_applies_to_expected_digests(vector, tmp_path):
    expected = json.loads((vector / "expected.json").read_text())
    info = deltaformat.inspect(vector / "artifact")
    assert info["base"]["fingerprint"] == expected["base_fingerprint"]
    assert info["post"]["fingerprint"] == expected["post_fingerprint"]
    assert info["patched_elements"] == expected["patched_elements"]
    m = deltaformat.open_artifact(vector / "artifact").manifest
    assert {t.name: t.kind for t in m.tensors} == expected["kinds"]
    r = deltaformat.apply([vector / "artifact"], vector / "base", tmp_path / "out", quiet=True)
    assert r.verified_exact
    out = load_file(tmp_path / "out" / "model.safetensors")
    got = {k: tensor_digest([chunk_hash(v.contiguous().view(-1).view(__import__("torch").uint8).numpy().tobytes())]) for k, v in out.items()}
    assert got == expected["post_digests"]


@pytest.mark.parametrize("vector", [p for p in VECTORS if p not in EXACT_VECTORS], ids=lambda p: p.name)
def test_lossy_vector_applies_and_is_never_called_exact(vector, tmp_path):
    expected = json.loads((vector / "expected.json").read_text())
    info = deltaformat.inspect(vector / "artifact")
    assert info["exact"] is False and info["lossy_preset"] == vector.name.removeprefix("v2-lossy-")
    assert info["base"]["fingerprint"] == expected["base_fingerprint"]
    r = deltaformat.apply([vector / "artifact"], vector / "base", tmp_path / "out", quiet=True)
    assert not r.verified_exact and r.lossy[0]["preset"] == info["lossy_preset"]
    assert set(load_file(tmp_path / "out" / "model.safetensors")) == set(expected["post_digests"])
