"""The chunk engine: every output chunk computed on every core, written in order, hashed for the proof.

A chunk of an output tensor is the new base's bits (copied, or combined with each
artifact's Δ in fp32: ``arith.combine``), then the patch (spec §6), then stored values
past the shared rows. Decoding goes through the codec named by each stream
(``Artifact.decode_chunk``), so a new codec needs nothing here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from deltaformat._parallel import ordered_map, scratch
from deltaformat.arith import cast, combine
from deltaformat.artifact import Artifact
from deltaformat.chunking import chunk_ranges
from deltaformat.codec.base import Decoded
from deltaformat.digests import chunk_hash
from deltaformat.errors import VerificationError
from deltaformat.manifest import Stream
from deltaformat.plan import OutTensor, PatchArrays, Term
from deltaformat.progress import progress
from deltaformat.proof import HashMode, Proof, base_chunk_hash, probe_other_base, proof_mode
from deltaformat.rawbits import uint_dtype
from deltaformat.writer import ShardedWriter


@dataclass(frozen=True)
class Job:
    """One unit of work on one chunk of one tensor.

    ``compute``: compute the chunk (and write it), hashing what ``hash`` names; else a
    follow-up of the proof, which only hashes what ``hash`` names: the base chunk again,
    or the output chunk read back from what was written.
    """

    tensor: OutTensor
    index: int
    start: int
    count: int
    hash: HashMode
    compute: bool = True


@dataclass(frozen=True)
class JobResult:
    job: Job
    base_hash: bytes | None = None
    out_hash: bytes | None = None
    bits: np.ndarray | None = None  # the computed chunk (compute jobs)


def compute(plan: list[OutTensor], writer: ShardedWriter | None, device: str, workers: int | None, quiet: bool,
            desc: str = "apply") -> bool:
    """Compute every output chunk (written by ``writer`` when given); True when each
    tensor was proven equal to the post model (original base, one artifact, alpha 1).

    Hashing only where it can matter (see ``deltaformat.proof``). Which of the two
    digests is taken while computing adapts to what was seen so far; the other one is
    taken afterwards only for the tensors where it matters, re-reading the base or the
    written output. The smallest tensors' base digests are taken first (at most about
    1 % of the base): on a new base (the ParamΔ case) one of them nearly always differs,
    and nothing else is hashed; on the original base each output is hashed once.
    """
    run = _Computation(plan, writer, device)
    with progress(sum(t.numel for t in plan), desc, quiet) as bar:
        for result in ordered_map(run.run, run.jobs(), workers):
            run.collect(result, bar.update)
        while run.follow_ups:  # follow-ups of the last tensors
            pending = list(run.follow_ups)
            run.follow_ups.clear()
            for result in ordered_map(run.run, pending, workers):
                run.collect(result, bar.update)
    for t in plan:
        if run.proofs[t.name].failed:
            raise VerificationError(f"tensor {t.name!r}: the output differs from the post model although the base is the original one")
    return bool(plan) and all(run.proofs[t.name].verified for t in plan)


class _Computation:
    """The state of one ``compute``: each tensor's proof, and what later tensors should hash."""

    def __init__(self, plan: list[OutTensor], writer: ShardedWriter | None, device: str):
        self.plan, self.writer, self.device = plan, writer, device
        self.proofs = {t.name: Proof(t, len(chunk_ranges(t.numel))) for t in plan}
        self.follow_ups: deque[Job] = deque()  # run between chunk jobs
        # Start by hashing bases: on a new base (the ParamΔ case) the first tensor then settles
        # that nothing can be proven; on the original base the first tensor's output is read
        # back once and later tensors hash their outputs. verify (no writer) hashes outputs.
        self.preferred = HashMode.BASE if writer is not None else HashMode.OUT
        if probe_other_base(plan, self.proofs):
            self.preferred = HashMode.NONE

    def jobs(self) -> Iterator[Job]:
        """Chunk jobs in output order, follow-ups slipped in as they arise. Lazy on purpose:
        a tensor's hash mode is chosen when its first job is taken, from what is known then."""
        for t in self.plan:
            proof = self.proofs[t.name]
            proof.mode = proof_mode(t, self.writer is not None, self.preferred, proof.known_original)
            for i, (s, c) in enumerate(chunk_ranges(t.numel)):
                while self.follow_ups:
                    yield self.follow_ups.popleft()
                yield Job(t, i, s, c, proof.mode)
        while self.follow_ups:
            yield self.follow_ups.popleft()

    def run(self, job: Job) -> JobResult:
        """Do one job (on a worker thread)."""
        t, s, c = job.tensor, job.start, job.count
        if job.compute:
            base_hash, bits = compute_chunk(t, s, c, self.device, hash_base=job.hash == HashMode.BASE)
            return JobResult(job, base_hash, chunk_hash(bits) if job.hash == HashMode.OUT else None, bits)
        if job.hash == HashMode.BASE:
            return JobResult(job, base_hash=base_chunk_hash(t, s, c, None))
        assert self.writer is not None  # outputs are read back only where they were written
        return JobResult(job, out_hash=chunk_hash(self.writer.read(t.name, s, c)))

    def collect(self, result: JobResult, advance: Callable[[int], object]) -> None:
        """Take one job's result (on the consuming thread, in job order)."""
        job, t = result.job, result.job.tensor
        if result.bits is not None and self.writer is not None:
            # Written here, by the one consuming thread: buffered writes to one file take
            # its inode lock, and workers writing concurrently spun on it (13 % of apply's
            # CPU in a profile); here they overlap with the workers' next chunks instead.
            self.writer.write(t.name, job.start, result.bits)
        proof = self.proofs[t.name]
        if result.base_hash is not None:
            proof.base[job.index] = result.base_hash
        if result.out_hash is not None:
            proof.out[job.index] = result.out_hash
        proof.pending -= 1
        if proof.pending == 0:
            self._settle(proof)
        if job.compute:
            advance(job.count)

    def _settle(self, proof: Proof) -> None:
        """A round of the tensor's chunks is in: decide, and queue the follow-up it needs."""
        follow = proof.step()
        if proof.other_base:
            self.preferred = HashMode.NONE
        elif follow == HashMode.BASE and self.preferred == HashMode.NONE:
            follow = None  # the base is already known not to be the original: nothing to prove
        elif follow is not None:
            # A mismatch on the output: the base is most likely another one; a match
            # on the base: the original. Later tensors hash what decides fastest.
            self.preferred = HashMode.BASE if follow == HashMode.BASE else HashMode.OUT
        if follow is not None and (self.writer is not None or follow == HashMode.BASE):
            t = proof.t
            proof.pending = proof.n
            self.follow_ups.extend(Job(t, k, s, c, follow, compute=False) for k, (s, c) in enumerate(chunk_ranges(t.numel)))


def compute_chunk(t: OutTensor, start: int, count: int, device: str, hash_base: bool = False) -> tuple[bytes | None, np.ndarray]:
    """Compute output elements [start, start+count) of ``t``; with ``hash_base``, also the base chunk's hash."""
    if t.base is None:
        assert t.values is not None  # an added tensor is its stored values
        return None, stream_range(t.values.artifact, t.values.stream, start, count, t.name)
    n_base = max(0, min(count, min(t.base.numel, t.numel) - start))
    parts = []
    # Base bits that only feed the arithmetic (not copied out as they are) go to a reused buffer.
    into = scratch("base", n_base * t.base.itemsize).view(uint_dtype(t.base.dtype)) if t.terms and n_base else None
    base_bits = t.base.read(start, n_base, into) if n_base else None
    base_hash = base_chunk_hash(t, start, count, base_bits) if hash_base else None
    if base_bits is not None:
        if not t.terms:  # unchanged by every artifact: the new base's own bits
            parts.append(base_bits)
        else:
            deltas = [(term.alpha, delta_range(term, start, n_base)) for term in t.terms]
            out = combine(base_bits, t.base.dtype, deltas, t.dtype, device)
            if t.patch is not None:
                out = patch_chunk(out, base_bits, t.patch, start)
            parts.append(out)
    if n_base < count:
        assert t.values is not None  # the manifest stores the rows past the base's
        stored = t.values
        vals = stream_range(stored.artifact, stored.stream, start + n_base - stored.first, count - n_base, t.name)
        if stored.stream.dtype != t.dtype:
            vals = cast(vals, stored.stream.dtype, t.dtype)
        parts.append(vals)
    if not parts:  # a 0-element tensor
        return base_hash, np.empty(0, uint_dtype(t.dtype))
    return base_hash, parts[0] if len(parts) == 1 else np.concatenate(parts)


def delta_range(term: Term, start: int, count: int) -> np.ndarray | Decoded:
    """Δ for elements [start, start+count); zero beyond the rows this delta covers.

    Exactly one stored chunk (the usual case) comes back as a ``Decoded``, which
    ``combine`` turns into fp32 block by block without a chunk-sized array.
    """
    stream = term.entry.delta
    assert stream is not None  # a term has a Δ (plan_outputs keeps only those)
    C = stream.chunk_elements
    if start % C == 0 and count == min(C, stream.numel - start):
        return term.artifact.decode_chunk(stream, start // C, f"tensor {term.entry.name!r}")
    n = max(0, min(count, stream.numel - start))
    d = stream_range(term.artifact, stream, start, n, term.entry.name) if n else np.empty(0, np.uint32)
    return d if n == count else np.concatenate([d, np.zeros(count - n, np.uint32)])


def stream_range(art: Artifact, stream: Stream, start: int, count: int, name: str) -> np.ndarray:
    """Decode elements [start, start+count) of a stream (one chunk when aligned, else several)."""
    if count == 0:
        return np.empty(0, uint_dtype(stream.dtype))
    C = stream.chunk_elements
    first, last = start // C, (start + count - 1) // C
    pieces = [art.decode_chunk(stream, i, f"tensor {name!r}").array() for i in range(first, last + 1)]
    joined = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
    off = start - first * C
    return joined[off : off + count]


def patch_chunk(out: np.ndarray, base_bits: np.ndarray, patch: PatchArrays, start: int) -> np.ndarray:
    """Put the post model's bits where the patch lists an element whose base bits are the recorded ones."""
    idx, pb, pp = patch.index, patch.base_bits, patch.post_bits
    lo, hi = np.searchsorted(idx, [start, start + base_bits.size])
    if lo == hi:
        return out
    local = (idx[lo:hi] - np.uint64(start)).astype(np.int64)
    hit = base_bits[local] == pb[lo:hi]
    out = out.copy() if not out.flags.writeable else out
    out[local[hit]] = pp[lo:hi][hit]
    return out
