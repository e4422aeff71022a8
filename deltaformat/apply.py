"""apply: new base + Σ αᵢ Δᵢ → a ready-to-load model folder, streaming, pre-flight first."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deltaformat._parallel import ordered_map, scratch
from deltaformat._version import __version__
from deltaformat.arith import cast, combine
from deltaformat.artifact import Artifact, open_artifact
from deltaformat.codec.base import Decoded
from deltaformat.dtypes import ITEMSIZE, uint_dtype
from deltaformat.digests import blob_digest, chunk_hash, tensor_digest
from deltaformat.errors import FormatError, IncompatibleBaseError, NoSpaceError, VerificationError
from deltaformat.extract import chunk_ranges
from deltaformat.fsutil import TEMP_MARK, atomic_folder
from deltaformat.manifest import Manifest, Patch, Stream, TensorEntry, check_carried_content
from deltaformat.models import ModelSource, TensorRef, open_model
from deltaformat.patch import decode_patch
from deltaformat.progress import progress
from deltaformat.writer import ShardedWriter, parse_size, planned_bytes

# config.json keys taken from the post model: the tokens it was trained to use.
POST_CONFIG_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings")
PROVENANCE_FILE = "paramdelta.json"
MAX_LISTED = 8


@dataclass
class _Term:
    """One artifact's contribution to one output tensor."""

    artifact: Artifact
    alpha: float
    entry: TensorEntry


@dataclass
class _OutTensor:
    name: str
    dtype: str
    shape: list[int]
    base: TensorRef | None
    terms: list[_Term]  # the artifacts whose Δ touches this tensor (none: copy the base)
    values: tuple[Artifact, Stream, int] | None = None  # (artifact, stream, first output element)
    patch: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    expect: str | None = None  # post digest the output must have (original base, alpha 1)
    expect_base: str | None = None

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass
class ApplyResult:
    """What apply wrote and what it could prove."""

    out: Path
    tensors: int
    parameters: int
    verified_exact: bool
    config_changes: dict[str, tuple] = field(default_factory=dict)


def open_any(ref: str | os.PathLike | Artifact, *, quiet: bool = False) -> Artifact:
    """An artifact from a folder, or from the registry (``NS/NAME[:VERSION|@sha256:...]``, pulled into the cache)."""
    if isinstance(ref, Artifact):
        return ref
    if Path(ref).exists():
        return open_artifact(ref)
    from deltaformat.client import fetch_artifact

    return fetch_artifact(str(ref), quiet=quiet)


def apply(
    artifacts: Sequence[str | os.PathLike | Artifact],
    base: str | os.PathLike,
    out: str | os.PathLike,
    *,
    alphas: Sequence[float] | None = None,
    shard_size: int | str = "5GB",
    force: bool = False,
    quiet: bool = False,
    device: str = "cpu",
    workers: int | None = None,
    require_signature: str | os.PathLike | None = None,
) -> ApplyResult:
    """Write ``base + Σ alphas[i] * Δ[i]`` as a model folder at ``out``.

    Each artifact is a folder or a registry reference. The new base is pre-flighted
    against every manifest (names, shapes, dtypes) before any blob is decoded. On the
    original base with one artifact at alpha 1, every output tensor is checked against
    the post model's digest: the result is the post model, bit for bit. With
    ``require_signature`` (a public key's PEM file), every artifact must first be proven
    signed by that key and unchanged since (deltaformat.signing), before any blob is downloaded.
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
        changes = _write_side_files(tmp, arts, model, plan)
        _write_provenance(tmp, arts, alphas, model, verified, _record_files(tmp, writer.digests))
    return ApplyResult(Path(out), len(plan), total, verified, changes)


def prepare(artifacts: Sequence[str | os.PathLike | Artifact], base: str | os.PathLike, alphas: Sequence[float] | None,
            quiet: bool = False) -> tuple[list[Artifact], list[float], ModelSource, list[_OutTensor]]:
    """Open the artifacts and the base, pre-flight every manifest against the base (before
    any blob is decoded) and plan the output tensors: what apply and the lazy loader share."""
    arts = [open_any(a, quiet=quiet) for a in artifacts]
    if not arts:
        raise ValueError("apply needs at least one artifact")
    alphas = list(alphas) if alphas is not None else [1.0] * len(arts)
    if len(alphas) != len(arts):
        raise ValueError(f"{len(alphas)} alphas for {len(arts)} artifacts: give one alpha per artifact")
    model = open_model(base)
    for art in arts:
        preflight(art.manifest, model, art.location)
        missing = art.missing_blobs()
        if missing:
            raise FormatError(f"{art.location}: {len(missing)} blob(s) missing, first {missing[0]}; pull the artifact again")
    return arts, alphas, model, plan_outputs(arts, alphas, model)


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


def preflight(manifest: Manifest, model: ModelSource, location: str = "the artifact") -> None:
    """Fail with a list of mismatches unless ``model`` has the tensors the delta was taken on.

    A tensor the delta removes may be missing from the new base: the output drops it anyway
    (e.g. a buffer such as ``position_ids`` that newer transformers no longer save).
    """
    problems = []
    expected = {t.name: t.base for t in manifest.tensors if t.base is not None}
    removed = {t.name for t in manifest.tensors if t.kind == "removed"}
    for name, info in expected.items():
        ref = model.tensors.get(name)
        if ref is None:
            if name not in removed:
                problems.append(f"{name}: missing")
        elif list(ref.shape) != info.shape or ref.dtype != info.dtype:
            problems.append(f"{name}: expected {info.dtype}{info.shape}, found {ref.dtype}{list(ref.shape)}")
    problems += [f"{n}: not in the delta's base" for n in model.tensors if n not in expected]
    if problems:
        shown = "; ".join(problems[:MAX_LISTED])
        more = f"; and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise IncompatibleBaseError(
            f"base {model.id} does not fit {location} (extracted from {manifest.base.id}): "
            f"{len(problems)} tensor mismatch(es): {shown}{more}"
        )


def plan_outputs(arts: list[Artifact], alphas: list[float], model: ModelSource) -> list[_OutTensor]:
    """Decide every output tensor: its dtype, shape and which stored streams make it."""
    by_name: dict[str, list[_Term]] = {}
    for art, alpha in zip(arts, alphas):
        for e in art.manifest.tensors:
            by_name.setdefault(e.name, []).append(_Term(art, alpha, e))
    order = list(model.tensors) + [n for n in by_name if n not in model.tensors]
    single_exact = len(arts) == 1 and alphas[0] == 1.0
    plan = []
    for name in order:
        terms = by_name[name]
        kinds = {t.entry.kind for t in terms}
        if "removed" in kinds:
            if kinds != {"removed"}:
                raise IncompatibleBaseError(f"tensor {name!r}: removed by one artifact but kept by another")
            continue
        if "added" in kinds:
            if len(terms) > 1:
                raise IncompatibleBaseError(f"tensor {name!r}: added by {len(terms)} artifacts; only one may add it")
            e = terms[0].entry
            plan.append(_OutTensor(name, e.post.dtype, e.post.shape, None, [], (terms[0].artifact, e.values, 0),
                                   expect=e.post.digest))
            continue
        ref = model.tensors[name]
        out = _OutTensor(name, ref.dtype, list(ref.shape), ref, [t for t in terms if t.entry.delta is not None])
        resized = [t for t in terms if t.entry.kind == "resized"]
        if len(resized) > 1:
            raise IncompatibleBaseError(f"tensor {name!r}: resized by several artifacts; combining resizes is not defined")
        if resized:
            e = resized[0].entry
            out.shape = list(e.post.shape)
            if e.values is not None:
                out.values = (resized[0].artifact, e.values, min(e.base.numel, e.post.numel))
        e = terms[0].entry
        if single_exact and e.post.dtype == ref.dtype:
            out.expect, out.expect_base = e.post.digest, e.base.digest
            if e.patch is not None:
                out.patch = _load_patch(terms[0].artifact, e)
        plan.append(out)
    return plan


def _load_patch(art: Artifact, e: TensorEntry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p: Patch = e.patch
    data = art.read_blob(p.digest, p.size, f"tensor {e.name!r} patch")
    return decode_patch(data, p.count, ITEMSIZE[e.base.dtype], ITEMSIZE[e.post.dtype])


def compute(plan: list[_OutTensor], writer: ShardedWriter | None, device: str, workers: int | None, quiet: bool, desc: str = "apply") -> bool:
    """Compute every output chunk (written by ``writer`` when given); True when each
    tensor was proven equal to the post model (original base, one artifact, alpha 1).

    Hashing only where it can matter: a tensor's output digest equal to the post digest
    proves it whatever the base was; otherwise its base digest decides whether the base
    is the original one (then the mismatch is an error). Which of the two digests is
    taken while computing adapts to what was seen so far; the other one is taken
    afterwards only for the tensors where it matters, re-reading the base or the written
    output. Once one tensor's base digest differs from the original's, the base is not
    the original model (its fingerprint cannot match), nothing can be proven any more,
    and later tensors are not hashed at all, like tensors that never can be (several
    artifacts, alpha != 1, a new dtype). The smallest tensors' base digests are taken
    first (at most about 1 % of the base): on a new base (the ParamΔ case) one of them
    nearly always differs, and nothing else is hashed; on the original base each output
    is hashed once.
    """
    total = sum(t.numel for t in plan)
    proofs = {t.name: _Proof(t, len(chunk_ranges(t.numel))) for t in plan}
    extra: deque[tuple] = deque()  # follow-up hashing jobs, run between chunk jobs
    # Start by hashing bases: on a new base (the ParamΔ case) the first tensor then settles
    # that nothing can be proven; on the original base the first tensor's output is read
    # back once and later tensors hash their outputs. verify (no writer) hashes outputs.
    state = {"mode": "base" if writer is not None else "out"}
    if _probe_other_base(plan, proofs):
        state["mode"] = "none"

    def jobs() -> Iterator[tuple]:
        for t in plan:
            proof = proofs[t.name]
            proof.mode = _proof_mode(t, writer, state["mode"], proof.known_original)
            for i, (s, c) in enumerate(chunk_ranges(t.numel)):
                while extra:
                    yield extra.popleft()
                yield ("chunk", t, i, s, c, proof.mode)
        while extra:
            yield extra.popleft()

    def run(job: tuple) -> tuple:
        kind, t, i, s, c = job[:5]
        if kind == "chunk":
            mode = job[5]
            base_hash, bits = _chunk(t, s, c, device, hash_base=mode == "base")
            return kind, t, i, c, base_hash, chunk_hash(bits) if mode == "out" else None, (s, bits)
        if kind == "base":
            return kind, t, i, 0, _base_chunk_hash(t, s, c, None), None, None
        return kind, t, i, 0, None, chunk_hash(writer.read(t.name, s, c)), None  # "out": read back what was written

    def collect(result: tuple) -> None:
        kind, t, i, c, bh, oh, computed = result
        if computed is not None and writer is not None:
            # Written here, by the one consuming thread: buffered writes to one file take
            # its inode lock, and workers writing concurrently spun on it (13 % of apply's
            # CPU in a profile); here they overlap with the workers' next chunks instead.
            writer.write(t.name, *computed)
        proof = proofs[t.name]
        proof.base[i] = bh if bh is not None else proof.base[i]
        proof.out[i] = oh if oh is not None else proof.out[i]
        proof.pending -= 1
        if proof.pending == 0:
            follow = proof.step()
            if proof.other_base:
                state["mode"] = "none"
            elif follow == "base" and state["mode"] == "none":
                follow = None  # the base is already known not to be the original: nothing to prove
            elif follow:
                # A mismatch on the output: the base is most likely another one; a match
                # on the base: the original. Later tensors hash what decides fastest.
                state["mode"] = "base" if follow == "base" else "out"
            if follow and (writer is not None or follow == "base"):
                proof.pending = proof.n
                extra.extend((follow, t, k, s, c) for k, (s, c) in enumerate(chunk_ranges(t.numel)))
        if kind == "chunk":
            bar.update(c)

    with progress(total, desc, quiet) as bar:
        for result in ordered_map(run, jobs(), workers):
            collect(result)
        while extra:  # follow-ups of the last tensors
            pending = list(extra)
            extra.clear()
            for result in ordered_map(run, pending, workers):
                collect(result)
    for t in plan:
        if proofs[t.name].failed:
            raise VerificationError(f"tensor {t.name!r}: the output differs from the post model although the base is the original one")
    return bool(plan) and all(proofs[t.name].verified for t in plan)


PROBE_SHARE = 0.01  # of the base's bytes, at most, hashed up front to recognise a new base


def _probe_other_base(plan: list[_OutTensor], proofs: dict[str, "_Proof"]) -> bool:
    """Hash the bases of the smallest provable tensors first; True once one is not the original's.

    Tensors found on the original base keep their base hashes and are proven through
    their outputs (a mismatch there is an error, as always).
    """
    provable = [t for t in plan if t.expect is not None and t.expect_base is not None and _base_digest_defined(t) and t.base.numel]
    budget = max(1 << 20, int(PROBE_SHARE * sum(t.base.numel * t.base.itemsize for t in provable)))
    for t in sorted(provable, key=lambda t: t.base.numel):
        budget -= t.base.numel * t.base.itemsize
        if budget < 0:
            break
        proof = proofs[t.name]
        proof.base = [_base_chunk_hash(t, s, c, None) for s, c in chunk_ranges(t.numel)]
        if not proof._on_original():
            proof.other_base = True
            return True
        proof.known_original = True
    return False


def _proof_mode(t: _OutTensor, writer: ShardedWriter | None, preferred: str, known_original: bool = False) -> str:
    """"none" (nothing to prove), "out" (hash the output) or "base" (hash the base) while computing ``t``."""
    if t.expect is None:
        return "none"
    if known_original:  # cheap to keep: its output must be the post's whatever the other tensors are
        return "out"
    if preferred == "none":
        return "none"
    if preferred == "base" and writer is not None and _base_digest_defined(t) and t.expect_base is not None:
        return "base"
    return "out"


def _base_digest_defined(t: _OutTensor) -> bool:
    """Whether the chunks of ``t`` give the whole base tensor's digest (not when the output shrinks it)."""
    return t.base is not None and t.base.numel <= t.numel


@dataclass
class _Proof:
    """What is known about one output tensor being the post model's."""

    t: _OutTensor
    n: int  # chunks
    mode: str = "none"
    pending: int = 0
    base: list = field(default_factory=list)
    out: list = field(default_factory=list)
    verified: bool = False
    failed: bool = False
    other_base: bool = False  # this tensor's base digest is not the original base's
    known_original: bool = False  # its base digest was found to be the original's up front
    stage: int = 0

    def __post_init__(self) -> None:
        self.pending = self.n
        self.base = [None] * self.n
        self.out = [None] * self.n

    def _on_original(self) -> bool:
        t = self.t
        hashes = [h for h in self.base if h is not None]
        return t.expect_base is None or (bool(hashes) and tensor_digest(hashes) == t.expect_base)

    def step(self) -> str | None:
        """Decide after a round of chunks; return the follow-up ("base"/"out") still needed, if any."""
        t = self.t
        self.stage += 1
        if self.mode == "none":
            return None
        if self.mode == "out":
            if self.stage == 1:
                if tensor_digest(self.out) == t.expect:
                    self.verified = True
                    return None
                if t.expect_base is None or self.known_original:
                    self.failed = True
                    return None
                if not _base_digest_defined(t) and t.base is not None and t.base.numel != 0:
                    return None  # the base digest is not taken on a shrunk tensor: not provable
                return "base"
            self.failed = self._on_original()
            self.other_base = not self.failed
            return None
        # mode "base"
        if self.stage == 1:
            if self._on_original():
                return "out"
            self.other_base = True
            return None
        self.verified = tensor_digest(self.out) == t.expect
        self.failed = not self.verified
        return None


def _base_chunk_hash(t: _OutTensor, start: int, count: int, base_bits: np.ndarray | None) -> bytes | None:
    """Hash of the base's part of output chunk [start, start+count), as the base digest takes it.

    None where the chunk adds nothing to the base digest (beyond the base's rows, or a
    shrunk tensor, whose chunks do not cover the base).
    """
    if t.base is None:
        return None
    if t.base.numel == 0:
        return chunk_hash(b"")
    n_base = max(0, min(count, min(t.base.numel, t.numel) - start))
    if not n_base or t.base.numel > t.numel:
        return None
    return chunk_hash(base_bits if base_bits is not None else t.base.read(start, n_base))


def _chunk(t: _OutTensor, start: int, count: int, device: str, hash_base: bool = False) -> tuple[bytes | None, np.ndarray]:
    """Compute output elements [start, start+count) of ``t``; with ``hash_base``, also the base chunk's hash."""
    if t.base is None:
        art, stream, _ = t.values
        return None, _stream_range(art, stream, start, count, t.name)
    n_base = max(0, min(count, min(t.base.numel, t.numel) - start))
    parts = []
    # Base bits that only feed the arithmetic (not copied out as they are) go to a reused buffer.
    into = scratch("base", n_base * t.base.itemsize).view(uint_dtype(t.base.dtype)) if t.terms and n_base else None
    base_bits = t.base.read(start, n_base, into) if n_base else None
    base_hash = _base_chunk_hash(t, start, count, base_bits) if hash_base else None
    if n_base:
        if not t.terms:  # unchanged by every artifact: the new base's own bits
            parts.append(base_bits)
        else:
            deltas = [(term.alpha, _delta_range(term, start, n_base)) for term in t.terms]
            out = combine(base_bits, t.base.dtype, deltas, t.dtype, device)
            if t.patch is not None:
                out = _patch_chunk(out, base_bits, t.patch, start)
            parts.append(out)
    if n_base < count:
        art, stream, first = t.values
        vals = _stream_range(art, stream, start + n_base - first, count - n_base, t.name)
        if stream.dtype != t.dtype:
            vals = cast(vals, stream.dtype, t.dtype)
        parts.append(vals)
    if not parts:  # a 0-element tensor
        return base_hash, np.empty(0, uint_dtype(t.dtype))
    return base_hash, parts[0] if len(parts) == 1 else np.concatenate(parts)


def _delta_range(term: _Term, start: int, count: int) -> np.ndarray | Decoded:
    """Δ for elements [start, start+count); zero beyond the rows this delta covers.

    Exactly one stored chunk (the usual case) comes back as a ``Decoded``, which
    ``combine`` turns into fp32 block by block without a chunk-sized array.
    """
    stream = term.entry.delta
    C = stream.chunk_elements
    if start % C == 0 and count == min(C, stream.numel - start):
        return term.artifact.decode_chunk(stream, start // C, f"tensor {term.entry.name!r}")
    n = max(0, min(count, stream.numel - start))
    d = _stream_range(term.artifact, stream, start, n, term.entry.name) if n else np.empty(0, np.uint32)
    return d if n == count else np.concatenate([d, np.zeros(count - n, np.uint32)])


def _stream_range(art: Artifact, stream: Stream, start: int, count: int, name: str) -> np.ndarray:
    """Decode elements [start, start+count) of a stream (one chunk when aligned, else several)."""
    if count == 0:
        return np.empty(0, uint_dtype(stream.dtype))
    C = stream.chunk_elements
    first, last = start // C, (start + count - 1) // C
    pieces = [art.decode_chunk(stream, i, f"tensor {name!r}").array() for i in range(first, last + 1)]
    joined = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
    off = start - first * C
    return joined[off : off + count]


def _patch_chunk(out: np.ndarray, base_bits: np.ndarray, patch, start: int) -> np.ndarray:
    idx, pb, pp = patch
    lo, hi = np.searchsorted(idx, [start, start + base_bits.size])
    if lo == hi:
        return out
    local = (idx[lo:hi] - np.uint64(start)).astype(np.int64)
    hit = base_bits[local] == pb[lo:hi]
    out = out.copy() if not out.flags.writeable else out
    out[local[hit]] = pp[lo:hi][hit]
    return out


def _write_side_files(folder: Path, arts: list[Artifact], model: ModelSource, plan: list[_OutTensor]) -> dict[str, tuple]:
    """config.json from the new base with the post model's token ids; the post model's tokenizer files."""
    first = arts[0]
    m = first.manifest
    config = output_config(arts, model, plan)
    if config:
        (folder / "config.json").write_text(config_text(config))
    for f in m.files:
        data = first.read_blob(f.digest, f.size, f"file {f.path!r}")
        check_carried_content(f.path, data)
        (folder / f.path).parent.mkdir(parents=True, exist_ok=True)
        _create(folder / f.path, data)
    keys = set(m.base_config) | set(m.post_config) | set(model.config)
    return {
        k: (m.base_config.get(k), m.post_config.get(k), model.config.get(k))
        for k in sorted(keys)
        if not (m.base_config.get(k) == m.post_config.get(k) == model.config.get(k))
    }


def config_text(config: dict) -> str:
    """config.json as apply writes it."""
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


def output_config(arts: list[Artifact], model: ModelSource, plan: list[_OutTensor]) -> dict:
    """The output's config.json: the new base's, with the post model's token ids (and its vocabulary size when resized)."""
    m = arts[0].manifest
    config = dict(model.config)
    for key in POST_CONFIG_KEYS:
        if key in m.post_config:
            config[key] = m.post_config[key]
    rows = {t.shape[0] for t in plan if t.values is not None and t.base is not None}
    if len(rows) == 1 and "vocab_size" in config:
        config["vocab_size"] = rows.pop()
    return config


def _create(path: Path, data: bytes) -> None:
    """Write a new file; an existing one (or a symlink) is an error, never overwritten."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except FileExistsError:
        raise FormatError(f"carried file {path.name!r} collides with a file apply writes") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _record_files(folder: Path, shard_digests: dict[str, tuple[str, int]]) -> dict[str, dict]:
    """sha256 and size of every file in the output (shards as hashed while written).

    The output folder started empty; anything in it that apply did not write as a
    regular file is an error, so the record covers the whole folder.
    """
    files = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if rel == TEMP_MARK or path.is_dir() and not path.is_symlink():
            continue
        if path.is_symlink() or not path.is_file():
            raise VerificationError(f"{rel}: the output holds something apply did not write as a file")
        if rel in shard_digests:
            digest, size = shard_digests[rel]
        else:
            data = path.read_bytes()
            digest, size = blob_digest(data), len(data)
        files[rel] = {"sha256": digest, "size": size}
    return files


def _write_provenance(folder: Path, arts: list[Artifact], alphas: list[float], model: ModelSource, verified: bool,
                      files: dict[str, dict]) -> None:
    """paramdelta.json: the inputs, whether the output was proven to be the post model, and
    the sha256 of every other file in the folder (what was proven is exactly what is there)."""
    _create(folder / PROVENANCE_FILE, provenance_bytes(arts, alphas, model, verified, files))


def provenance_bytes(arts: list[Artifact], alphas: list[float], model: ModelSource, verified: bool,
                     files: dict[str, dict]) -> bytes:
    """paramdelta.json's bytes (``files``: relative path -> sha256 and size, in the folder's sorted order)."""
    record = {
        "tool": {"name": "paramdelta", "version": __version__},
        "base": {"id": model.id, "source": model.source, "revision": model.revision, "commit": model.commit},
        "deltas": [
            {"location": a.location, "manifest_digest": a.digest, "name": a.manifest.name, "version": a.manifest.version,
             "source": a.source, "alpha": al}
            for a, al in zip(arts, alphas)
        ],
        "verified_exact": verified,
        "files": files,
    }
    return (json.dumps(record, indent=2) + "\n").encode()
