"""verify: prove an artifact intact, and optionally the round trip on its base.

``inspect`` lives in deltaformat.summary, which starts without numpy; it is re-exported here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from deltaformat._parallel import ordered_map
from deltaformat.artifact import Artifact
from deltaformat.compat import check_base
from deltaformat.digests import chunk_hash, tensor_digest
from deltaformat.dtypes import ITEMSIZE
from deltaformat.errors import CorruptBlobError, VerificationError
from deltaformat.manifest import Manifest, Stream, check_carried_content
from deltaformat.models import ModelSource, TensorRef, open_model
from deltaformat.patch import decode_patch
from deltaformat.progress import progress
from deltaformat.resolve import DeltaRef, Source, resolve
from deltaformat.summary import inspect

if TYPE_CHECKING:
    from deltaformat.sidefiles import LossyRecord  # the module itself is loaded only for a lossy artifact


@dataclass
class VerifyReport:
    artifact: str
    manifest_digest: str
    blobs: int
    stored_bytes: int
    round_trip: bool  # True when --base was given and the post model was reproduced bit for bit
    lossy: LossyRecord | None = None  # lossy: preset and recorded errors against the exact Δ (never a round-trip claim)
    base_is_original: bool = False  # lossy: --base was given and its tensors are the extraction base's


def verify(artifact: DeltaRef | Source, *, base: str | os.PathLike[str] | ModelSource | None = None, quiet: bool = False,
           workers: int | None = None, require_signature: str | os.PathLike[str] | None = None) -> VerifyReport:
    """Check every blob, decoded stream, patch and carried file against the manifest.

    With ``base``, also recompute base + Δ for every tensor and check it equals the post
    model's digests: the proof that apply on that base gives the post model back. The
    base is pre-flighted against manifest.json first, before any blob is downloaded. With
    ``require_signature`` (a public key's PEM file), the artifact is first proven signed by that
    key and unchanged since (deltaformat.signing), before anything else reads it.
    """
    if require_signature is not None:
        from deltaformat.signing import require_signed

        artifact = require_signed([artifact], require_signature)[0]
    source = resolve(artifact)
    model: ModelSource | None = None
    checked: Manifest | None = None
    if base is not None:
        checked = source.manifest()
        model = base if isinstance(base, ModelSource) else open_model(base)
        check_base(checked, model, source.location)
    art = source.materialize(quiet=quiet)
    m = art.manifest
    if model is not None and m is not checked and m != checked:  # a registry tag moved between the two requests
        check_base(m, model, source.location)
    _check_streams(art, m, quiet, workers)
    for e in m.tensors:
        if e.patch is not None:
            assert e.base is not None and e.post is not None  # the manifest's rule: only changed or resized tensors carry one
            data = art.read_blob(e.patch.digest, e.patch.size, f"tensor {e.name!r} patch")
            decode_patch(data, e.patch.count, ITEMSIZE[e.base.dtype], ITEMSIZE[e.post.dtype])
    for f in m.files:
        check_carried_content(f.path, art.read_carried(f))  # lossy: v2 carried files are compressed
    if m.is_lossy:  # lossy: report the recorded error; a lossy Δ never reproduces the post model bit for bit
        return _verify_lossy(art, model, workers)
    if model is not None:
        _round_trip(art, model, quiet, workers)
    return VerifyReport(art.location, art.digest, len(m.blob_digests()), m.stored_bytes(), model is not None)


def _check_streams(art: Artifact, m: Manifest, quiet: bool, workers: int | None) -> None:
    """Decode every chunk of every stream and compare each stream's digest with the manifest's."""
    streams = [(e.name, s) for e in m.tensors for s in (e.delta, e.values) if s is not None]
    jobs = [(name, s, i) for name, s in streams for i in range(len(s.chunks))]
    hashes: dict[int, list[bytes]] = {id(s): [] for _, s in streams}
    with progress(sum(s.numel for _, s in streams), "verify", quiet) as bar:
        for s, h, n in ordered_map(lambda j: _decode_job(art, *j), jobs, workers):
            hashes[id(s)].append(h)
            bar.update(n)
    for name, s in streams:
        if s.digest is not None and tensor_digest(hashes[id(s)] or [chunk_hash(b"")]) != s.digest:
            raise CorruptBlobError(f"tensor {name!r}: decoded stream does not match its recorded digest")


def _round_trip(art: Artifact, model: ModelSource, quiet: bool, workers: int | None) -> None:
    """Recompute base + Δ and prove every tensor equals the post model's; else say the base is another."""
    # Loaded here: the arithmetic and the proof are needed only for a round trip, and
    # verify without a base starts without them.
    from deltaformat.engine import compute
    from deltaformat.plan import plan_outputs

    m = art.manifest
    if not compute(plan_outputs([art], [1.0], model), None, "cpu", workers, quiet, "round trip"):
        raise VerificationError(f"{model.id} is not the base this delta was extracted from ({m.base.id}, {m.base.fingerprint}); "
                                "the round trip cannot be proven on it")


def _verify_lossy(art: Artifact, model: ModelSource | None, workers: int | None) -> VerifyReport:
    """A lossy artifact checked intact (done by the caller); with ``model`` (pre-flighted by the caller), checked
    to be its original base by the base digests."""
    from deltaformat.sidefiles import lossy_record

    m = art.manifest
    original = False
    if model is not None:
        # each job carries the recorded base digest itself: the filter's proof that e.base is set stays with it
        sides = [(e.name, e.base.digest, model.tensors[e.name]) for e in m.tensors if e.base is not None and e.name in model.tensors]
        digests = ordered_map(lambda job: (job[0], job[1], _tensor_digest(job[2])), sides, workers)
        wrong = [name for name, want, got in digests if got != want]
        if wrong:
            raise VerificationError(f"{model.id} is not the base this delta was extracted from ({m.base.id}): "
                                    f"tensor {wrong[0]!r} differs ({len(wrong)} tensor(s) in all)")
        original = True
    return VerifyReport(art.location, art.digest, len(m.blob_digests()), m.stored_bytes(), False, lossy_record(art), original)


def _tensor_digest(ref: TensorRef) -> str:
    from deltaformat.chunking import chunk_ranges

    return tensor_digest([chunk_hash(ref.read(s, c)) for s, c in chunk_ranges(ref.numel)])


def _decode_job(art: Artifact, name: str, s: Stream, i: int) -> tuple[Stream, bytes, int]:
    bits = art.decode_chunk(s, i, f"tensor {name!r}").array()
    return s, chunk_hash(bits), bits.size


__all__ = ["verify", "inspect", "VerifyReport"]
