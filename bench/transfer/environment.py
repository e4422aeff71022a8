"""The process settings the transfer benchmark runs under, set by its entry points (never on import)."""

from __future__ import annotations

import os


def configure() -> None:
    """Offline Hugging Face libraries, quiet transformers, and OpenMP threads that sleep rather than spin
    (the machines are shared). Before torch is imported where it can be: OpenMP reads its settings when loaded."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
