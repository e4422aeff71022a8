"""The tests' standard artifacts: a tiny base/post/new-base trio and two deltas extracted from it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from paramdelta_dev.tiny_models import make_trio


@dataclass
class Artifacts:
    base: Path
    post: Path
    newbase: Path
    delta: Path  # base -> post
    other: Path  # base -> newbase: another artifact, for "different content" cases


def make_artifacts(root: Path) -> Artifacts:
    """The trio under ``root`` and both deltas (acme/tiny-chat 1.0, acme/tiny-other 1.0)."""
    import deltaformat

    base, post, newbase = make_trio(root)
    delta, other = root / "delta", root / "other"
    deltaformat.extract(base, post, delta, name="acme/tiny-chat", version="1.0",
                        description="Tiny chat delta for tests", license="apache-2.0", quiet=True)
    deltaformat.extract(base, newbase, other, name="acme/tiny-other", version="1.0", description="Another delta", quiet=True)
    return Artifacts(base, post, newbase, delta, other)
