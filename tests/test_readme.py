"""The README describes the tree that is there: its Layout table and its Configuration table.

A newcomer finds their way through the Layout section; a module that moved or a new one left
out makes it lie quietly. The same for the client's environment variables, defined in one module
(deltaformat/environment.py) and listed in the README.
"""

from __future__ import annotations

import re
from pathlib import Path

from deltaformat.environment import VARIABLES

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
# Packages whose every module the Layout table must name.
DESCRIBED = ("deltaformat", "registry")


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end != -1 else None]


def layout_paths() -> set[Path]:
    """Every path the Layout table names: `dir/file.py` in full, then bare names relative to the same folder."""
    paths: set[Path] = set()
    for row in section("Layout").splitlines():
        if not row.startswith("| `"):
            continue
        first_cell = row.split("|")[1]
        names = re.findall(r"`([^`]+)`", first_cell)
        folder = Path(names[0]).parent if "/" in names[0].rstrip("/") else Path(".")
        for name in names:
            paths.add(Path(name.rstrip("/")) if "/" in name else folder / name)
    return paths


def test_every_path_in_the_layout_table_exists():
    missing = sorted(str(p) for p in layout_paths() if not (ROOT / p).exists())
    assert missing == [], f"README Layout names paths that are not in the tree: {missing}"


def test_the_layout_table_names_every_module_of_the_packages():
    named = layout_paths()
    unnamed = []
    for package in DESCRIBED:
        for module in sorted((ROOT / package).rglob("*.py")):
            rel = module.relative_to(ROOT)
            if rel.name in ("__init__.py", "_version.py") or "migrations" in rel.parts:
                continue
            # A module is named itself, or through the folder it lives in (registry/routers/, deltaformat/codec/).
            if rel not in named and not any(parent in named for parent in rel.parents):
                unnamed.append(str(rel))
    assert unnamed == [], f"modules the README Layout table does not mention: {unnamed}"


def test_the_configuration_table_lists_every_client_variable():
    listed = set(re.findall(r"^\| `([A-Z_]+)` \|", section("Configuration"), flags=re.M))
    assert listed == set(VARIABLES), f"README lists {sorted(listed ^ set(VARIABLES))} differently from deltaformat/environment.py"
