"""Benchmark reports: each benchmark owns one marked section of BENCHMARKS.md and rewrites only that."""

from __future__ import annotations

import os
from pathlib import Path


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def write_section(path: Path, name: str, text: str) -> None:
    """Replace what lies between the ``name`` markers in ``path`` (or append the marked section); nothing
    else in the file changes. Written beside it and renamed, so a killed benchmark leaves the file whole."""
    begin, end = markers(name)
    block = f"{begin}\n{text.rstrip()}\n{end}"
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    if begin in old and end in old and old.index(begin) < old.index(end):
        new = old[: old.index(begin)] + block + old[old.index(end) + len(end):]
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(new)
    os.replace(tmp, path)
