"""Measuring harness: each measured command in its own child process (wall, CPU, peak RSS), page-cache control."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.format.paths import BENCH, ROOT

T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.0f}s] {msg}", file=sys.stderr, flush=True)


def fsync_tree(folder: Path) -> float:
    t = time.perf_counter()
    for f in folder.rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    return time.perf_counter() - t


def safetensors_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


_LAUNCHER = r"""
import json, os, sys, time
cmd, resfile = json.loads(sys.argv[1]), sys.argv[2]
t = time.perf_counter()
pid = os.posix_spawnp(cmd[0], cmd, os.environ)
_, status, ru = os.wait4(pid, 0)
res = {"outer_wall": time.perf_counter() - t, "rss_mb": ru.ru_maxrss / 1024, "child_cpu": ru.ru_utime + ru.ru_stime,
       "code": os.waitstatus_to_exitcode(status)}
with open(resfile, "w") as f:
    json.dump(res, f)
sys.exit(1 if res["code"] else 0)
"""


def run_child(argv: list[str], cwd: Path | None = None) -> dict:
    """Run a child (``--child`` op: bench.format.child, or any command); return its JSON plus wall time, CPU and peak RSS."""
    cmd = argv if argv[0] != "--child" else [sys.executable, "-m", "bench.format.child", *argv[1:]]
    cwd = ROOT if cwd is None and argv[0] == "--child" else cwd  # -m finds the bench package from the repository root
    env = {**os.environ, "PARAMDELTA_QUIET": "1", "TOKENIZERS_PARALLELISM": "false"}
    errf, resf = BENCH / "child.stderr", BENCH / "child.json"
    resf.unlink(missing_ok=True)
    with open(errf, "w") as err:
        p = subprocess.run([sys.executable, "-S", "-c", _LAUNCHER, json.dumps([str(c) for c in cmd]), str(resf)],
                           stdout=subprocess.PIPE, stderr=err, env=env, cwd=cwd)
    if p.returncode or not resf.is_file():
        tail = errf.read_text()[-2000:]
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({p.returncode}):\n{tail}")
    res: dict = {}
    lines = p.stdout.decode().strip().splitlines()
    if lines and argv[0] == "--child":
        res = json.loads(lines[-1])
    res.update(json.loads(resf.read_text()))
    return res


def rm_tree(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)


def warm_cache(folders: list[Path]) -> None:
    """Read our inputs once, untimed, so every timed run starts from the same warm page cache."""
    buf = bytearray(16 << 20)
    for folder in folders:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                with open(f, "rb", buffering=0) as fh:
                    while fh.readinto(buf):
                        pass


def evict_cache(folders: list[Path]) -> None:
    """Drop our own files from the page cache (other processes' caches are untouched)."""
    for folder in folders:
        for f in folder.rglob("*"):
            if f.is_file():
                fd = os.open(f, os.O_RDONLY)
                try:
                    os.fsync(fd)
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def run_settled(argv: list[str], out: Path) -> dict:
    """Run a child twice, removing ``out`` before each, and return the second run, with the first's wall
    time as ``settle_wall``.

    Why: on a virtual machine a run's time can depend on the command before it (apply right after
    the load+save floor, which frees a model's worth of memory at exit, was measured slower than right
    after another apply). Each timed run follows an untimed run of the same command, so every command
    meets the state it leaves itself; the report shows how far the untimed runs were from the timed ones.
    """
    rm_tree(out)
    first = run_child(argv)
    rm_tree(out)
    timed = run_child(argv)
    timed["settle_wall"] = first["wall"]
    return timed


def settling(runs: list[dict]) -> tuple[float, float] | None:
    """(least, most) of untimed-first-run wall / timed-run wall over ``runs`` (those made by run_settled)."""
    r = [x["settle_wall"] / x["wall"] for x in runs if "settle_wall" in x and x["wall"] > 0]
    return (min(r), max(r)) if r else None


def ratios(a: list[dict], f: list[dict]) -> list[float]:
    return [x["wall"] / y["wall"] for x, y in zip(a, f)]
