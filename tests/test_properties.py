"""Property tests: whatever bytes or manifest a hostile delta holds, readers fail only with
the project's named errors (ParamDeltaError subclasses), and never allocate beyond what
the shapes and the format's fixed caps allow."""

from __future__ import annotations

import copy
import json
import math
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deltaformat.apply import plan_outputs, preflight
from deltaformat.artifact import MANIFEST_FILE, open_artifact
from deltaformat.codec import codec_ids, get_codec
from deltaformat.dtypes import ITEMSIZE
from deltaformat.errors import CorruptBlobError, FormatError, ParamDeltaError
from deltaformat.manifest import CHUNK_ELEMENTS, MAX_BLOB_BYTES, MAX_TENSOR_ELEMENTS, Manifest, parse_manifest
from deltaformat.models import open_model
from deltaformat.patch import decode_patch, encode_patch
from deltaformat.writer import planned_bytes

BOUNDED = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2 ** 70), max_value=2 ** 70) | st.floats(allow_nan=False)
    | st.text(max_size=20) | st.sampled_from(["..", ".", "model.safetensors", "F32", "changed", "added", "sha256:" + "a" * 64]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def real_manifest(artifacts) -> dict:
    return json.loads((artifacts.delta / MANIFEST_FILE).read_bytes())


def _paths(doc, prefix=()):
    """Every (path, value) in a JSON document, containers included."""
    yield prefix, doc
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for k, v in items:
        yield from _paths(v, (*prefix, k))


def _set(doc, path, value):
    for k in path[:-1]:
        doc = doc[k]
    if value is _DELETE and isinstance(doc, dict):
        del doc[path[-1]]
    elif value is not _DELETE:
        doc[path[-1]] = value


_DELETE = object()
_DEEP = "@@deeply nested@@"  # replaced by deep nesting once serialised


def assert_within_shapes(m: Manifest) -> None:
    """What a parsed manifest may make a reader allocate: bounded by shapes and the format's caps."""
    for t in m.tensors:
        post = t.post.numel if t.post else 0
        shared = min(t.base.numel, post) if t.base else 0
        for s in (t.delta, t.values):
            if s is not None:
                assert s.numel <= max(post, shared) <= MAX_TENSOR_ELEMENTS and s.chunk_elements == CHUNK_ELEMENTS
                assert all(c.size <= MAX_BLOB_BYTES for c in s.chunks)
        if t.patch is not None:
            assert t.patch.count <= shared
        for info in (t.base, t.post):
            if info is not None:
                assert all(d <= MAX_TENSOR_ELEMENTS for d in info.shape)


@BOUNDED
@given(data=st.data())
def test_mutated_manifests_parse_or_fail_with_a_format_error(real_manifest, data):
    raw = copy.deepcopy(real_manifest)
    for _ in range(data.draw(st.integers(1, 3))):
        paths = [p for p, _ in _paths(raw) if p]
        path = data.draw(st.sampled_from(paths))
        _set(raw, path, data.draw(st.one_of(json_values, st.just(_DELETE), st.just(_DEEP))))
    deep = "[" * 3000 + "]" * 3000  # nesting a recursive parser cannot survive
    try:
        m = parse_manifest(json.dumps(raw).replace(json.dumps(_DEEP), deep).encode())
    except FormatError:
        return
    assert_within_shapes(m)


SIZE_FIELDS = ("numel", "chunk_elements", "count", "size", "shape")


@BOUNDED
@given(data=st.data())
def test_any_size_field_a_manifest_claims_stays_within_its_shapes(real_manifest, data):
    """The fields that drive allocations (stream numel, chunk size, patch count, blob size,
    shape dimensions) set to anything: either refused, or bounded by the shapes."""
    raw = copy.deepcopy(real_manifest)
    for _ in range(data.draw(st.integers(1, 3))):
        paths = [p for p, v in _paths(raw) if p and p[-1] in SIZE_FIELDS]
        path = data.draw(st.sampled_from(paths))
        value = data.draw(st.integers(0, 2 ** 64) | st.sampled_from([1 << 22, 1 << 30, 1 << 40, (1 << 40) + 1]))
        if path[-1] == "shape":
            _set(raw, (*path, data.draw(st.integers(0, max(0, len(_get(raw, path)) - 1)))), value) if _get(raw, path) else None
        else:
            _set(raw, path, value)
    try:
        m = parse_manifest(json.dumps(raw).encode())
    except FormatError:
        return
    assert_within_shapes(m)


def _get(doc, path):
    for k in path:
        doc = doc[k]
    return doc


@BOUNDED
@given(data=st.data())
def test_mutated_manifest_bytes_parse_or_fail_with_a_format_error(real_manifest, data):
    raw = bytearray(json.dumps(real_manifest).encode())
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i:i + 1] = data.draw(st.binary(max_size=3) | st.just(b"[" * 3000))  # the latter: nesting no recursive parser survives
    try:
        assert_within_shapes(parse_manifest(bytes(raw)))
    except FormatError:
        pass


# -- codecs --------------------------------------------------------------------------------

def _decode_bounded(codec_id: str, data: bytes, numel: int, itemsize: int) -> None:
    """Decode; only CorruptBlobError may come out, and memory stays within a few times the chunk."""
    tracemalloc.start()
    try:
        try:
            out = get_codec(codec_id).decode_blocks(data, numel, itemsize).array()
            assert out.size == numel and out.dtype.itemsize == itemsize
        except CorruptBlobError:
            pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= 8 * numel * itemsize + len(data) + (256 << 10), f"{peak} bytes for {numel} elements of {itemsize}"


@settings(max_examples=150, deadline=None)
@given(codec_id=st.sampled_from(codec_ids()), itemsize=st.sampled_from([1, 2, 4, 8]), numel=st.integers(0, 3000),
       data=st.binary(max_size=600))
def test_random_bytes_decode_or_fail_with_corrupt_blob(codec_id, itemsize, numel, data):
    _decode_bounded(codec_id, data, numel, itemsize)


@settings(max_examples=150, deadline=None)
@given(codec_id=st.sampled_from(codec_ids()), itemsize=st.sampled_from([1, 2, 4, 8]), data=st.data())
def test_mutated_encodings_decode_or_fail_with_corrupt_blob(codec_id, itemsize, data):
    dtype = np.dtype(f"<u{itemsize}")
    values = data.draw(st.lists(st.integers(0, 2 ** (8 * itemsize) - 1) | st.sampled_from([0, 1]), min_size=0, max_size=2000))
    blob = bytearray(get_codec(codec_id).encode(np.array(values, dtype=dtype)))
    for _ in range(data.draw(st.integers(0, 4))):
        if not blob:
            break
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i:i + data.draw(st.integers(0, 2))] = data.draw(st.binary(max_size=4))
    numel = data.draw(st.sampled_from([len(values), len(values) + 1, max(0, len(values) - 1), 4 * len(values)]))
    _decode_bounded(codec_id, bytes(blob), numel, itemsize)


@settings(max_examples=100, deadline=None)
@given(count=st.integers(1, 500), data=st.data())
def test_mutated_patches_decode_or_fail_with_corrupt_blob(count, data):
    idx = np.arange(count, dtype=np.uint64) * 3
    blob = bytearray(encode_patch(idx, np.zeros(count, np.uint16), np.ones(count, np.uint16)))
    for _ in range(data.draw(st.integers(0, 3))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i:i + 1] = data.draw(st.binary(max_size=2))
    claimed = data.draw(st.sampled_from([count, count + 1, count * 100]))
    tracemalloc.start()
    try:
        try:
            decode_patch(bytes(blob), claimed, 2, 2)
        except CorruptBlobError:
            pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= 4 * claimed * 12 + (256 << 10)


# -- the apply planner ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def base_model(artifacts):
    return open_model(artifacts.base)


dims = st.integers(0, 2 ** 20)
shapes = st.lists(dims, min_size=1, max_size=3).filter(lambda s: math.prod(s) <= MAX_TENSOR_ELEMENTS) | st.sampled_from(
    [[2 ** 64, 0], [0, 2 ** 63], [2 ** 41, 0, 3]])  # no elements, but dimensions no int64 can hold


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_planned_output_is_exactly_the_shapes_whatever_the_manifest_claims(artifacts, base_model, real_manifest, data):
    """Manifests adding tensors of any shape: planning the output either fails with a named
    error or gives exactly the shapes' size, computed without allocating by shape."""
    raw = copy.deepcopy(real_manifest)
    expected = {}
    for t in raw["tensors"]:
        if t["kind"] != "removed":
            expected[t["name"]] = math.prod(t["post"]["shape"]) * ITEMSIZE[base_model.tensors[t["name"]].dtype]
    for i in range(data.draw(st.integers(0, 3))):
        shape = data.draw(shapes)
        numel, dtype = math.prod(shape), data.draw(st.sampled_from(["F32", "BF16", "I64"]))
        n_chunks = -(-numel // CHUNK_ELEMENTS)
        raw["tensors"].append({"name": f"evil.{i}", "kind": "added", "post": {"shape": shape, "dtype": dtype, "digest": "sha256:" + "5" * 64},
                               "values": {"codec": "bytegroup-zstd", "dtype": dtype, "numel": numel, "chunk_elements": CHUNK_ELEMENTS,
                                          "chunks": [{"digest": "sha256:" + "6" * 64, "size": 600}] * n_chunks,
                                          "digest": "sha256:" + "7" * 64}})
        expected[f"evil.{i}"] = numel * ITEMSIZE[dtype]
    art = open_artifact(artifacts.delta)
    try:
        art.manifest = parse_manifest(json.dumps(raw).encode())  # (memory by the manifest's own size)
    except FormatError:
        return
    tracemalloc.start()
    try:
        preflight(art.manifest, base_model)
        plan = plan_outputs([art], [1.0], base_model)
        total = planned_bytes([(t.name, t.dtype, t.shape) for t in plan])
        peak = tracemalloc.get_traced_memory()[1]
    except ParamDeltaError:
        return
    finally:
        tracemalloc.stop()
    planned = {t.name: math.prod(t.shape) * ITEMSIZE[t.dtype] for t in plan}
    assert planned == expected and total == sum(expected.values())
    assert peak < 8 << 20  # patches of the real tensors, nothing by shape
