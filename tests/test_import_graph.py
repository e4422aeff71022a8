"""The packages' module-level imports form no cycles, and the light entry points stay light.

A cycle between modules is a two-way dependency (issue #11: every module in its room).
The graph is read from the source with ``ast``: module-level imports only (an import
inside a function runs when the function does, and ``if TYPE_CHECKING:`` never runs), an
edge to the module named (``from a.b import c`` is ``a.b.c`` when that is a module, else
``a.b``).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("deltaformat", "registry")
# What ``paramdelta apply`` computes with: ``inspect`` and ``verify`` of an artifact alone do without it.
APPLY_STACK = ("deltaformat.apply", "deltaformat.engine", "deltaformat.plan", "deltaformat.proof", "deltaformat.arith",
               "deltaformat.writer", "deltaformat.sidefiles")


def module_files() -> dict[str, Path]:
    """Every module of the packages: dotted name -> file."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _runtime_statements(body: list[ast.stmt]) -> list[ast.stmt]:
    """The statements that run on import: into if/try/with blocks, not into functions or classes
    (a class body runs, but no module here imports in one), never into ``if TYPE_CHECKING:``."""
    out: list[ast.stmt] = []
    for node in body:
        if isinstance(node, ast.If):
            test = node.test
            if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                    isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
                out += _runtime_statements(node.orelse)
                continue
            out += _runtime_statements(node.body) + _runtime_statements(node.orelse)
        elif isinstance(node, ast.Try):
            out += _runtime_statements(node.body) + _runtime_statements(node.orelse) + _runtime_statements(node.finalbody)
            for handler in node.handlers:
                out += _runtime_statements(handler.body)
        elif isinstance(node, ast.With):
            out += _runtime_statements(node.body)
        else:
            out.append(node)
    return out


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    """The modules of the packages that module ``name`` imports when it is imported."""
    is_package = path.name == "__init__.py"
    edges = set()
    for node in _runtime_statements(ast.parse(path.read_text(), str(path)).body):
        if isinstance(node, ast.Import):
            edges |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                edges.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {e for e in edges if e in modules and e != name}


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_reader_sees_a_cycle_where_there_is_one():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [frozenset({"a", "b", "c"})]
    assert "deltaformat.engine" in import_graph()["deltaformat.apply"]  # and reads real imports


def test_deltaformat_and_registry_modules_import_each_other_without_cycles():
    graph = import_graph()
    assert {"deltaformat.apply", "registry.app", "registry.blobs"} <= set(graph)
    assert [sorted(c) for c in cycles(graph)] == []


def test_the_format_library_never_imports_the_registry_at_module_level():
    graph = import_graph()
    assert {(m, d) for m, deps in graph.items() if m.startswith("deltaformat") for d in deps if d.startswith("registry")} == set()


def _loaded(code: str) -> set[str]:
    """Modules a fresh interpreter imports running ``code`` (from ``-X importtime``, as a user would look)."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")
            and "|" in line} - {"imported package"}


def test_import_deltaformat_loads_no_registry_module():
    loaded = _loaded("import deltaformat")
    assert "deltaformat" in loaded
    assert sorted(m for m in loaded if m == "registry" or m.startswith("registry.")) == []


@pytest.mark.parametrize("code", ["from deltaformat.verify import inspect", "import deltaformat; deltaformat.inspect",
                                  "from deltaformat.resolve import resolve", "from deltaformat.compat import preflight"])
def test_inspect_and_preflight_load_none_of_the_apply_stack(code: str):
    loaded = _loaded(code)
    assert "deltaformat.artifact" in loaded  # the reader is there
    assert sorted(m for m in loaded if m in APPLY_STACK or m in ("torch", "httpx")) == []


@pytest.mark.parametrize("code", ["import deltaformat; deltaformat.inspect", "from deltaformat.summary import inspect",
                                  "from deltaformat.client import pull, push, search"])
def test_the_manifest_and_registry_readers_load_no_numpy(code: str):
    """inspect, pull, push and search read manifests, JSON and blobs: numpy (the codecs, the arithmetic) stays unloaded."""
    loaded = _loaded(code)
    assert "deltaformat.artifact" in loaded
    assert sorted(m for m in loaded if m == "numpy" or m.startswith(("numpy.", "deltaformat.codec"))) == []
