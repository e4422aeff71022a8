"""apply: new base + Σ αᵢ Δᵢ → a ready-to-load model folder, streaming, pre-flight first.

The orchestration, in the order that never wastes a download (issue #11):

    manifest      each delta's manifest.json alone (deltaformat.resolve)
    pre-flight    the base against every manifest (deltaformat.compat); the base is opened once
    materialise   the blobs, downloaded into the cache where a delta is a registry reference
    plan          the output tensors and what makes each (deltaformat.plan)
    compute       every chunk, written in order and hashed for the proof (deltaformat.engine,
                  deltaformat.proof), then config.json, carried files and paramdelta.json
                  (deltaformat.sidefiles)
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from deltaformat.artifact import Artifact
from deltaformat.chunking import chunk_ranges
from deltaformat.compat import MAX_LISTED, check_base, preflight
from deltaformat.engine import compute, compute_chunk, delta_range, patch_chunk, stream_range
from deltaformat.errors import FormatError, NoSpaceError
from deltaformat.fsutil import atomic_folder
from deltaformat.manifest import Manifest
from deltaformat.models import ModelSource, open_model
from deltaformat.plan import OutTensor, Term, load_patch, plan_outputs
from deltaformat.proof import PROBE_SHARE, Proof, base_chunk_hash, base_digest_defined, probe_other_base
from deltaformat.resolve import DeltaRef, Source, resolve
from deltaformat.sidefiles import (
    POST_CONFIG_KEYS,
    PROVENANCE_FILE,
    ConfigChanges,
    LossyRecord,
    config_text,
    lossy_record,
    output_config,
    provenance_bytes,
    record_files,
    write_provenance,
    write_side_files,
)
from deltaformat.writer import ShardedWriter, parse_size, planned_bytes

# The private names this module held before it was split by concern, kept for callers that
# reach into it (deltaformat.lazy and deltaformat.mount among them); new code imports the
# modules that define them.
_OutTensor, _Term, _Proof = OutTensor, Term, Proof
_chunk, _delta_range, _stream_range, _patch_chunk = compute_chunk, delta_range, stream_range, patch_chunk
_load_patch, _base_chunk_hash, _base_digest_defined, _probe_other_base = load_patch, base_chunk_hash, base_digest_defined, probe_other_base


@dataclass
class ApplyResult:
    """What apply wrote and what it could prove."""

    out: Path
    tensors: int
    parameters: int
    verified_exact: bool
    config_changes: ConfigChanges = field(default_factory=dict)
    lossy: list[LossyRecord] = field(default_factory=list)  # lossy: each lossy delta's preset and recorded errors


def apply(
    artifacts: Sequence[DeltaRef | Source],
    base: str | os.PathLike[str] | ModelSource,
    out: str | os.PathLike[str],
    *,
    alphas: Sequence[float] | None = None,
    shard_size: int | str = "5GB",
    force: bool = False,
    quiet: bool = False,
    device: str = "cpu",
    workers: int | None = None,
    require_signature: str | os.PathLike[str] | None = None,
) -> ApplyResult:
    """Write ``base + Σ alphas[i] * Δ[i]`` as a model folder at ``out``.

    Each artifact is a folder, an Artifact, a registry reference or a ``resolve``d Source.
    The new base is pre-flighted against every manifest (names, shapes, dtypes) before
    any blob is downloaded or decoded. On the original base with one artifact at alpha 1, every output tensor is
    checked against the post model's digest: the result is the post model, bit for bit. With
    ``require_signature`` (a public key's PEM file), every artifact must first be proven signed by
    that key and unchanged since (deltaformat.signing), before anything else reads it.
    """
    if require_signature is not None:
        from deltaformat.signing import require_signed

        artifacts = require_signed(artifacts, require_signature)
    arts, alphas, model, plan = prepare(artifacts, base, alphas, quiet)
    shard_bytes = parse_size(shard_size)
    total = sum(t.numel for t in plan)
    tensors = [(t.name, t.dtype, t.shape) for t in plan]
    _check_space(Path(out), planned_bytes(tensors) + sum(f.size for f in arts[0].manifest.files), len(plan), quiet)
    with atomic_folder(out, force=force) as tmp:
        writer = ShardedWriter(tmp, tensors, shard_bytes)
        try:
            verified = compute(plan, writer, device, workers, quiet)
            writer.close()
        finally:
            writer.abort()
        changes = write_side_files(tmp, arts, model, plan)
        write_provenance(tmp, arts, alphas, model, verified, record_files(tmp, writer.digests))
    return ApplyResult(Path(out), len(plan), total, verified, changes, [lossy_record(a) for a in arts if a.manifest.is_lossy])


def prepare(artifacts: Sequence[DeltaRef | Source], base: str | os.PathLike[str] | ModelSource,
            alphas: Sequence[float] | None, quiet: bool = False) -> tuple[list[Artifact], list[float], ModelSource, list[OutTensor]]:
    """Resolve the artifacts, pre-flight every manifest against the base, then download what
    is needed and plan the output tensors: what apply and the lazy loader share.

    Nothing is downloaded before every manifest fits the base (a registry reference costs
    one manifest.json request until then), and the base is opened once.
    """
    sources = [resolve(a) for a in artifacts]
    if not sources:
        raise ValueError("apply needs at least one artifact")
    alphas = list(alphas) if alphas is not None else [1.0] * len(sources)
    if len(alphas) != len(sources):
        raise ValueError(f"{len(alphas)} alphas for {len(sources)} artifacts: give one alpha per artifact")
    manifests = [s.manifest() for s in sources]
    model = base if isinstance(base, ModelSource) else open_model(base)
    for source, manifest in zip(sources, manifests):
        check_base(manifest, model, source.location)
    arts = [_materialize(s, m, model, quiet) for s, m in zip(sources, manifests)]
    return arts, alphas, model, plan_outputs(arts, alphas, model)


def _materialize(source: Source, checked: Manifest, model: ModelSource, quiet: bool) -> Artifact:
    """The artifact behind ``source``, its blobs all there; pre-flighted again if its manifest is
    not the one checked (a registry tag moved between the two requests)."""
    art = source.materialize(quiet=quiet)
    if art.manifest is not checked and art.manifest != checked:
        check_base(art.manifest, model, source.location)
    missing = art.missing_blobs()
    if missing:
        raise FormatError(f"{art.location}: {len(missing)} blob(s) missing, first {missing[0]}; pull the artifact again")
    return art


def open_any(ref: DeltaRef, *, quiet: bool = False) -> Artifact:
    """An artifact from a folder, or from the registry (pulled into the cache); ``resolve(ref).materialize()``."""
    return resolve(ref).materialize(quiet=quiet)


HEADROOM_BYTES = 16 << 20  # shard headers, index, config.json: small, but counted


def _check_space(out: Path, nbytes: int, tensors: int, quiet: bool) -> None:
    """Say how big the output will be, and fail before writing when the disk cannot hold it.

    The output's size follows from the shapes alone (a manifest cannot make apply write
    more than them), so it is known before any chunk is decoded.
    """
    needed = nbytes + HEADROOM_BYTES
    if not quiet:
        print(f"apply: writing {tensors} tensors, {nbytes:,} bytes ({nbytes / 1e9:.2f} GB), to {out}", file=sys.stderr)
    parent = next((p for p in (out.absolute(), *out.absolute().parents) if p.exists()), Path("/"))
    free = shutil.disk_usage(parent).free
    if free < needed:
        raise NoSpaceError(f"not enough space for {out}: the output needs {needed:,} bytes, {parent} has {free:,} free")


__all__ = [
    # this module's own
    "ApplyResult", "apply", "open_any", "prepare",
    # re-exported from the modules apply.py was split into (their names before the split)
    "MAX_LISTED", "POST_CONFIG_KEYS", "PROBE_SHARE", "PROVENANCE_FILE", "chunk_ranges", "compute", "config_text",
    "output_config", "plan_outputs", "preflight", "provenance_bytes",
]
