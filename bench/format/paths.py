"""Where the format benchmark keeps its generated data (.bench/, git-ignored and reused between runs)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / ".bench"
