"""Codec ``lowrank-bf16-v1`` (lossy): each chunk's rows of Δ as a product of two thin factors.

Why: fine-tuning deltas concentrate their energy in few singular directions (the premise of
LoRA and of the low-rank baselines in Delta-CoMe), so a truncated SVD with an energy
threshold often keeps most of Δ at a small fraction of its size; on a sparse Δ (rows of
an embedding a fine-tune never touched) the untouched rows cost nothing. The chunk is
laid out as whole rows of its tensor (C columns, its first element at column L), so
blocks of rows are approximated independently and decoded chunk-parallel. format-v2.md §5.4:

    u32 N (= numel) | u32 C (1 … 2^22) | u32 L (< C) | u16 R | if R > 0: zstd stream: U, rows·R bf16 (row-major)
                                               | zstd stream: V, R·C bf16 (row-major)

with rows = ceil((L + numel) / C) and R <= min(rows, C). Element p of the chunk is the
entry (i, j) = divmod(L + p, C) of U·V, computed in binary64 and rounded once to binary32
(readers may differ where the binary64 sum lies within its own rounding error of a
binary32 rounding boundary: a lossy stream has no digest to reproduce).

Encoder settings: ``energy`` (keep the fewest singular values holding this share of
‖Δ‖²), ``max_rank``, and ``budget`` (bytes per element: the rank is capped so the
factors of the touched rows fit; 0 for no cap). The singular values are split evenly
(√σ) between the factors, so both fit bf16's range alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from deltaformat.codec._lossyframes import MAX_GROUP, U16, U32, bf16_bits, bf16_values, check_count, put_stream, reader
from deltaformat.codec.base import LossyCodec, check_finite

MAX_RANK = 0xFFFF


class LowRankBf16(LossyCodec):
    id = "lowrank-bf16-v1"
    defaults = {"energy": 0.9, "max_rank": 256, "budget": 0.0}

    def encode_delta(self, delta: np.ndarray, cols: int, lead: int, **params: int | float) -> bytes:
        p = self.settings(**params)
        check_finite(self.id, delta)
        d = np.ascontiguousarray(delta, dtype=np.float32).reshape(-1)
        cols = max(1, min(int(cols), MAX_GROUP))
        lead = int(lead) % cols
        rows = -(-(lead + d.size) // cols) if d.size else 0
        flat = np.zeros(rows * cols, np.float32)
        flat[lead : lead + d.size] = d
        grid = flat.reshape(rows, cols)
        touched = np.flatnonzero(np.any(grid != 0, axis=1))
        u = s = vt = None
        if touched.size:
            u, s, vt = np.linalg.svd(grid[touched].astype(np.float64), full_matrices=False)
        rank = self._rank(s, p, d.size, touched.size, cols)
        out = bytearray(U32.pack(d.size) + U32.pack(cols) + U32.pack(lead) + U16.pack(rank))
        if rank == 0:
            return bytes(out)
        assert u is not None and s is not None and vt is not None  # rank > 0 only after an SVD
        root = np.sqrt(s[:rank])
        left = np.zeros((rows, rank), np.float32)
        left[touched] = u[:, :rank] * root
        put_stream(out, bf16_bits(left).astype("<u2"))
        put_stream(out, bf16_bits((vt[:rank] * root[:, None]).astype(np.float32)).astype("<u2"))
        return bytes(out)

    @staticmethod
    def _rank(s: np.ndarray | None, p: dict[str, Any], numel: int, n_touched: int, cols: int) -> int:
        """The fewest singular values ``s`` holding ``energy`` of ‖Δ‖², within ``max_rank`` and ``budget``."""
        if s is None or not s.size or s[0] == 0:
            return 0
        energy = np.cumsum(s**2)
        want = int(np.searchsorted(energy, float(p["energy"]) * energy[-1]) + 1)
        # never more factor elements than the touched rows hold: past that, bf16 rounding of Δ is smaller and better
        cap = min(int(p["max_rank"]), n_touched, cols, MAX_RANK, (n_touched * cols) // (n_touched + cols))
        if float(p["budget"]) > 0:
            cap = min(cap, int(float(p["budget"]) * numel // (2 * (n_touched + cols))))
        return max(0, min(want, cap, int(np.count_nonzero(s))))

    def decode(self, data: bytes, numel: int, itemsize: int) -> np.ndarray:
        r = reader(data, self.id, numel)
        if itemsize != 4:
            r.fail(f"decodes F32 Δ only, not {itemsize}-byte elements")
        check_count(r, numel)
        cols, lead = r.u32("columns"), r.u32("lead")
        rank = U16.unpack(r.take(2, "rank"))[0]
        if not 1 <= cols <= MAX_GROUP or lead >= cols:
            r.fail(f"columns {cols} outside 1..{MAX_GROUP} or lead {lead} not below it")
        rows = -(-(lead + numel) // cols) if numel else 0
        if rank > min(rows, cols):
            r.fail(f"rank {rank} above min(rows {rows}, columns {cols})")
        if rank == 0:
            r.end()
            return np.zeros(numel, np.uint32)
        left = bf16_values(r.stream(2 * rows * rank, "left factor").view("<u2")).reshape(rows, rank)
        right = bf16_values(r.stream(2 * rank * cols, "right factor").view("<u2")).reshape(rank, cols)
        r.end()
        if not (np.all(np.isfinite(left)) and np.all(np.isfinite(right))):
            r.fail("a factor holds NaN or ±∞")
        with np.errstate(over="ignore"):
            full = (left.astype(np.float64) @ right.astype(np.float64)).reshape(-1)[lead : lead + numel].astype(np.float32)
        if not np.all(np.isfinite(full)):
            r.fail("the product overflows float32")
        return full.view(np.uint32)
