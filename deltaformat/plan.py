"""Planning (spec §7.2): which output tensors apply writes, their dtype and shape, and which
stored streams make each of them. Nothing is decoded here but patches (small, and needed
whole by every chunk)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deltaformat.artifact import Artifact
from deltaformat.dtypes import ITEMSIZE
from deltaformat.errors import IncompatibleBaseError
from deltaformat.manifest import Stream, TensorEntry
from deltaformat.models import ModelSource, TensorRef
from deltaformat.patch import decode_patch


@dataclass
class Term:
    """One artifact's contribution to one output tensor."""

    artifact: Artifact
    alpha: float
    entry: TensorEntry


@dataclass(frozen=True)
class StoredValues:
    """Output elements stored whole in an artifact (an added tensor, or a resized one's new rows)."""

    artifact: Artifact
    stream: Stream
    first: int  # the output element the stream's element 0 becomes


@dataclass(frozen=True)
class PatchArrays:
    """A decoded patch (spec §6): flat indices, and the base and post bits expected there."""

    index: np.ndarray
    base_bits: np.ndarray
    post_bits: np.ndarray


@dataclass
class OutTensor:
    """One tensor of the output model and what computes it."""

    name: str
    dtype: str
    shape: list[int]
    base: TensorRef | None
    terms: list[Term]  # the artifacts whose Δ touches this tensor (none: copy the base)
    values: StoredValues | None = None
    patch: PatchArrays | None = None
    expect: str | None = None  # post digest the output must have (original base, alpha 1)
    expect_base: str | None = None

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


def plan_outputs(arts: list[Artifact], alphas: list[float], model: ModelSource) -> list[OutTensor]:
    """Decide every output tensor: its dtype, shape and which stored streams make it."""
    by_name: dict[str, list[Term]] = {}
    for art, alpha in zip(arts, alphas):
        for e in art.manifest.tensors:
            by_name.setdefault(e.name, []).append(Term(art, alpha, e))
    order = list(model.tensors) + [n for n in by_name if n not in model.tensors]
    single_exact = len(arts) == 1 and alphas[0] == 1.0 and not arts[0].manifest.is_lossy  # lossy: nothing to prove
    plan = []
    for name in order:
        out = _plan_one(name, by_name[name], model, single_exact)
        if out is not None:
            plan.append(out)
    return plan


def _plan_one(name: str, terms: list[Term], model: ModelSource, single_exact: bool) -> OutTensor | None:
    """The output tensor ``name`` (None when the artifacts remove it)."""
    kinds = {t.entry.kind for t in terms}
    if "removed" in kinds:
        if kinds != {"removed"}:
            raise IncompatibleBaseError(f"tensor {name!r}: removed by one artifact but kept by another")
        return None
    if "added" in kinds:
        if len(terms) > 1:
            raise IncompatibleBaseError(f"tensor {name!r}: added by {len(terms)} artifacts; only one may add it")
        e = terms[0].entry
        assert e.post is not None and e.values is not None  # the manifest's rules for an added tensor
        return OutTensor(name, e.post.dtype, e.post.shape, None, [], StoredValues(terms[0].artifact, e.values, 0),
                         expect=e.post.digest)
    ref = model.tensors[name]
    out = OutTensor(name, ref.dtype, list(ref.shape), ref, [t for t in terms if t.entry.delta is not None])
    resized = [t for t in terms if t.entry.kind == "resized"]
    if len(resized) > 1:
        raise IncompatibleBaseError(f"tensor {name!r}: resized by several artifacts; combining resizes is not defined")
    if resized:
        e = resized[0].entry
        assert e.base is not None and e.post is not None
        out.shape = list(e.post.shape)
        if e.values is not None:
            out.values = StoredValues(resized[0].artifact, e.values, min(e.base.numel, e.post.numel))
    e = terms[0].entry
    if single_exact and e.post is not None and e.base is not None and e.post.dtype == ref.dtype:
        out.expect, out.expect_base = e.post.digest, e.base.digest
        if e.patch is not None:
            out.patch = load_patch(terms[0].artifact, e)
    return out


def load_patch(art: Artifact, e: TensorEntry) -> PatchArrays:
    """Read and decode the patch of tensor entry ``e``."""
    p = e.patch
    assert p is not None and e.base is not None and e.post is not None
    data = art.read_blob(p.digest, p.size, f"tensor {e.name!r} patch")
    return PatchArrays(*decode_patch(data, p.count, ITEMSIZE[e.base.dtype], ITEMSIZE[e.post.dtype]))
