"""What the registry benchmark measures on: the artifact's shape, transfer parallelism, where it writes."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / ".bench" / "registry"
BENCHMARKS = ROOT / "BENCHMARKS.md"
MiB = 1 << 20


WORKERS = 8  # deltaformat.client.TRANSFER_WORKERS; the floors use the same


CONCURRENCY = 32


NS = "bench"


FULL_MODEL = dict(layers=6, vocab=32000, hidden=1024, ffn=2816)


QUICK_MODEL = dict(layers=2, vocab=16000, hidden=1024, ffn=2816)


REL = 0.3  # post = base + N(0, 0.02 * REL)
TARGET_RATIO = 0.8  # registry throughput as a fraction of the faster floor's (the target)

