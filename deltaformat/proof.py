"""The exactness proof (spec §7.4): whether an output tensor is the post model's, bit for bit.

On the original base with one artifact at alpha 1, every output tensor's digest must equal
the post model's; on another base nothing can be proven and a mismatch is no error. Which
of the two applies is learned from digests, hashing as little as possible:

* a tensor's output digest equal to the post digest proves it, whatever the base was;
* otherwise its base digest decides: the original base's (then the mismatch is an error)
  or another base's (then nothing can be proven any more, and nothing more is hashed).

``Proof`` is that decision for one tensor, fed chunk hashes by whoever computes the
chunks (``engine.compute`` for apply and verify, ``lazy`` for tensors computed on
access). A codec whose output is not exact would report measured error here instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from deltaformat.chunking import chunk_ranges
from deltaformat.digests import chunk_hash, tensor_digest
from deltaformat.plan import OutTensor

PROBE_SHARE = 0.01  # of the base's bytes, at most, hashed up front to recognise a new base


class HashMode(str, Enum):
    """What is hashed while a tensor is computed (a ``str``: ``HashMode.OUT == "out"``)."""

    NONE = "none"  # nothing: the tensor cannot be proven, or the base is known to be another
    OUT = "out"  # the output chunks, compared with the post digest
    BASE = "base"  # the base chunks, compared with the original base's digest first


@dataclass
class Proof:
    """What is known about one output tensor being the post model's."""

    t: OutTensor
    n: int  # chunks
    mode: HashMode = HashMode.NONE
    pending: int = 0  # chunk hashes still to come in this round
    base: list[bytes | None] = field(default_factory=list)
    out: list[bytes | None] = field(default_factory=list)
    verified: bool = False
    failed: bool = False
    other_base: bool = False  # this tensor's base digest is not the original base's
    known_original: bool = False  # its base digest was found to be the original's up front
    stage: int = 0

    def __post_init__(self) -> None:
        self.mode = HashMode(self.mode)
        self.pending = self.n
        self.base = [None] * self.n
        self.out = [None] * self.n

    def on_original(self) -> bool:
        """Whether the base hashes taken so far give the original base's digest of this tensor."""
        t = self.t
        hashes = [h for h in self.base if h is not None]
        return t.expect_base is None or (bool(hashes) and _digest(hashes) == t.expect_base)

    _on_original = on_original  # the name lazy.py knew

    def step(self) -> HashMode | None:
        """Decide after a round of chunks; return the follow-up hashing still needed, if any."""
        self.stage += 1
        if self.mode == HashMode.NONE:
            return None
        if self.mode == HashMode.OUT:
            return self._step_out()
        return self._step_base()

    def _step_out(self) -> HashMode | None:
        """Outputs hashed first: a match proves the tensor; a mismatch needs the base's digest."""
        t = self.t
        if self.stage == 1:
            if _digest(self.out) == t.expect:
                self.verified = True
                return None
            if t.expect_base is None or self.known_original:
                self.failed = True
                return None
            if not base_digest_defined(t) and t.base is not None and t.base.numel != 0:
                return None  # the base digest is not taken on a shrunk tensor: not provable
            return HashMode.BASE
        self.failed = self.on_original()
        self.other_base = not self.failed
        return None

    def _step_base(self) -> HashMode | None:
        """Bases hashed first: another base ends the proof; the original one needs the output's digest."""
        if self.stage == 1:
            if self.on_original():
                return HashMode.OUT
            self.other_base = True
            return None
        self.verified = _digest(self.out) == self.t.expect
        self.failed = not self.verified
        return None


def _digest(hashes: Sequence[bytes | None]) -> str:
    """The tensor digest of a complete round of chunk hashes."""
    complete = [h for h in hashes if h is not None]
    assert len(complete) == len(hashes), "a proof step ran before every chunk of its round was hashed"
    return tensor_digest(complete)


def probe_other_base(plan: list[OutTensor], proofs: dict[str, Proof]) -> bool:
    """Hash the bases of the smallest provable tensors first; True once one is not the original's.

    On a new base (the ParamΔ case) one of them nearly always differs, and then nothing
    else is hashed. Tensors found on the original base keep their base hashes and are
    proven through their outputs (a mismatch there is an error, as always).
    """
    provable = [(t, t.base.numel, t.base.numel * t.base.itemsize) for t in plan
                if t.base is not None and t.base.numel and t.expect is not None and t.expect_base is not None
                and base_digest_defined(t)]
    budget = max(1 << 20, int(PROBE_SHARE * sum(nbytes for _, _, nbytes in provable)))
    for t, _, nbytes in sorted(provable, key=lambda p: p[1]):  # the smallest bases first
        budget -= nbytes
        if budget < 0:
            break
        proof = proofs[t.name]
        proof.base = [base_chunk_hash(t, s, c, None) for s, c in chunk_ranges(t.numel)]
        if not proof.on_original():
            proof.other_base = True
            return True
        proof.known_original = True
    return False


def proof_mode(t: OutTensor, writing: bool, preferred: HashMode, known_original: bool = False) -> HashMode:
    """What to hash while computing ``t``, given what the tensors before it taught (``preferred``).

    Hashing the base first needs the output written somewhere to read back (``writing``).
    """
    if t.expect is None:
        return HashMode.NONE
    if known_original:  # cheap to keep: its output must be the post's whatever the other tensors are
        return HashMode.OUT
    if preferred == HashMode.NONE:
        return HashMode.NONE
    if preferred == HashMode.BASE and writing and base_digest_defined(t) and t.expect_base is not None:
        return HashMode.BASE
    return HashMode.OUT


def base_digest_defined(t: OutTensor) -> bool:
    """Whether the chunks of ``t`` give the whole base tensor's digest (not when the output shrinks it)."""
    return t.base is not None and t.base.numel <= t.numel


def base_chunk_hash(t: OutTensor, start: int, count: int, base_bits: np.ndarray | None) -> bytes | None:
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
