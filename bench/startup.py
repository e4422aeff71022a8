"""Start-up of the ``paramdelta`` command, before and after issue #11's install split.

Each command runs as a user runs it: a new ``python -m deltaformat.cli`` process, with the
library taken from one of two trees (PYTHONPATH): ``before``, a git revision exported to a
temporary folder (default: the commit before the split), and ``after``, this working tree.
Both use this interpreter and its installed packages, so what differs is only what the
code imports. ``python -c pass`` in the same run is the floor every command shares.

Commands: ``--help``, ``apply --help``, ``inspect`` of a tiny artifact, ``apply`` of it to a
tiny model (transformers' Llama, two layers: the work is a few milliseconds, the rest is
start-up), and ``pull`` of it from a real ``paramdelta serve`` on 127.0.0.1 into a fresh
cache each time. Each is run ``--repeat`` times, interleaved (before, after, before, ...)
so that load on the machine falls on both alike; the median is reported, with the ratio
to the median of ``python -c pass``. Which of torch, fastapi and sqlalchemy each command
loads is read from one extra run with ``-X importtime``.

    python -m bench.startup [--before REV] [--repeat 7] [--no-write]

Writes its section of BENCHMARKS.md between ``<!-- startup:begin -->`` and
``<!-- startup:end -->`` and touches nothing else there.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from paramdelta_dev.report import write_section
from paramdelta_dev.serve import ServeProcess

REPO = Path(__file__).resolve().parents[1]

BEFORE = "7f5ec35"  # the tree when issue #11 began
WATCHED = ("torch", "fastapi", "sqlalchemy")  # what a client command should not load


@dataclass
class Command:
    label: str
    args: list[str] | None  # after `python -m deltaformat.cli`; None for the `python -c pass` floor


@dataclass
class Timing:
    seconds: list[float]
    loads: list[str]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def export_tree(rev: str, dest: Path) -> Path:
    """The library as it was at ``rev`` (deltaformat and registry only), without touching the working tree."""
    archive = subprocess.run(["git", "archive", "--format=tar", rev, "deltaformat", "registry"],
                             cwd=REPO, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def make_inputs(root: Path) -> tuple[Path, Path]:
    """A tiny (base, post, new base) trio and the artifact base -> post; returns (artifact, new base)."""
    import deltaformat
    from paramdelta_dev.tiny_models import make_trio

    base, post, newbase = make_trio(root)
    delta = root / "delta"
    # format_version 1 (exact, still read and written): the *before* tree reads no other, and both trees get the same artifact
    deltaformat.extract(base, post, delta, name="bench/startup", version="1", quiet=True, format_version=1)
    return delta, newbase


def start_registry(data: Path) -> tuple[ServeProcess, str]:
    """`paramdelta serve` on 127.0.0.1 with its data in ``data``, and a push token for the namespace bench."""
    from registry.auth import create_token
    from registry.db import Database
    from registry.settings import Settings

    env = {k: v for k, v in os.environ.items() if not k.startswith("PARAMDELTA_")}
    server = ServeProcess("registry", data.parent / "registry.log", ("--data", str(data)), env).start()
    db = Database(Settings(data=data).resolved_database_url())
    try:
        return server, create_token(db, "bench", "push")
    finally:
        db.dispose()


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return elapsed


def watched_loads(cmd: list[str], env: dict[str, str], cwd: Path) -> list[str]:
    """Which WATCHED packages the command imports (from -X importtime's lines, top-level names)."""
    done = subprocess.run([cmd[0], "-X", "importtime", *cmd[1:]], env=env, cwd=cwd, capture_output=True, text=True)
    names = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    return [w for w in WATCHED if w in names]


def measure(commands: list[Command], trees: dict[str, Path], scratch: Path, env: dict[str, str], repeat: int,
            fresh: Callable[[], dict[str, str]]) -> dict[tuple[str, str], Timing]:
    """Median-ready timings of every command in every tree, interleaved run by run."""
    results: dict[tuple[str, str], Timing] = {}
    for command in commands:
        for tree_name, tree in trees.items():
            cmd = [sys.executable, "-c", "pass"] if command.args is None else [sys.executable, "-m", "deltaformat.cli", *command.args]
            results[(command.label, tree_name)] = Timing([], watched_loads(cmd, env | {"PYTHONPATH": str(tree)} | fresh(), scratch))
    for _ in range(repeat):
        for command in commands:
            for tree_name, tree in trees.items():
                cmd = [sys.executable, "-c", "pass"] if command.args is None else [sys.executable, "-m", "deltaformat.cli", *command.args]
                results[(command.label, tree_name)].seconds.append(timed(cmd, env | {"PYTHONPATH": str(tree)} | fresh(), scratch))
    return results


def report(commands: list[Command], results: dict[tuple[str, str], Timing], before: str, repeat: int, argv: str) -> str:
    # `python -c pass` does not depend on the tree: one floor from all its runs
    floor_runs = [t for tree in ("before", "after") for t in results[("python -c pass", tree)].seconds]
    floor = dict.fromkeys(("before", "after"), statistics.median(floor_runs))
    rows = []
    for command in commands[1:]:
        b, a = results[(command.label, "before")], results[(command.label, "after")]
        rows.append(f"| `{command.label}` | {b.median * 1e3:.0f} | {b.median / floor['before']:.1f}x | {a.median * 1e3:.0f} | "
                    f"{a.median / floor['after']:.1f}x | {b.median / a.median:.1f}x | {', '.join(b.loads) or '-'} | {', '.join(a.loads) or '-'} |")
    return "\n".join([
        "## Start-up of the paramdelta command",
        "",
        f"`python -m bench.startup{argv}` ({time.strftime('%Y-%m-%d %H:%M')}; method in the script's docstring). "
        f"*before* = the library at {before}, *after* = this tree (since issue #11: CPU arithmetic in numpy, "
        "the package's names loaded on first use, the HTTP client only for registry references); "
        f"the same interpreter (Python {platform.python_version()}) "
        f"and installed packages (torch included) for both, {os.cpu_count()} cores shared with other work. Median of "
        f"{repeat} runs each; *x python* = that median over the median of `python -c pass` in the same run "
        f"({floor['after'] * 1e3:.0f} ms); *loads* = which of {', '.join(WATCHED)} the command imports. The tiny "
        "model's arithmetic and I/O take milliseconds: what `apply`, `inspect` and `pull` show here is start-up.",
        "",
        "| command | before ms | x python | after ms | x python | before / after | before loads | after loads |",
        "|---|---:|---:|---:|---:|---:|---|---|",
        *rows,
    ]) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", default=BEFORE, help=f"git revision to compare with (default {BEFORE})")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="startup-"))
    server = None
    try:
        trees = {"before": export_tree(a.before, work / "before"), "after": REPO}
        delta, newbase = make_inputs(work / "models")
        server, token = start_registry(work / "registry")
        from deltaformat import client

        client.push(delta, "bench/startup:1", registry=server.url, token=token, quiet=True)
        scratch = work / "scratch"
        scratch.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PARAMDELTA_")} | {
            "PARAMDELTA_QUIET": "1", "PARAMDELTA_REGISTRY": server.url}
        runs = iter(range(10**9))

        def fresh() -> dict[str, str]:  # a new download cache per run: pull downloads every time
            return {"PARAMDELTA_CACHE": str(scratch / f"cache-{next(runs)}")}

        out = str(scratch / "out")
        commands = [
            Command("python -c pass", None),
            Command("paramdelta --help", ["--help"]),
            Command("paramdelta apply --help", ["apply", "--help"]),
            Command("paramdelta inspect DELTA", ["inspect", str(delta)]),
            Command("paramdelta apply DELTA (tiny model)", ["apply", str(delta), "--base", str(newbase), "--out", out, "--force", "-q"]),
            Command("paramdelta pull REF (tiny delta)", ["pull", "bench/startup:1", "--out", out + "-pulled", "--force", "-q"]),
        ]
        results = measure(commands, trees, scratch, env, a.repeat, fresh)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    args = "" if argv is None and len(sys.argv) == 1 else " " + " ".join(sys.argv[1:] if argv is None else argv)
    text = report(commands, results, a.before, a.repeat, args)
    print(text)
    if not a.no_write:
        write_section(a.out, "startup", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
