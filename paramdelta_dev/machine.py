"""What a benchmark ran on, gathered in one place for every report: CPU, cores, memory, kernel, Python,
package versions, the filesystem of the work folder, the git commit, the load average."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_gib() -> float:
    """Total RAM in GiB (NaN where /proc/meminfo is not there)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def package_version(name: str) -> str:
    """The installed distribution's version, or "absent"."""
    try:
        return version(name)
    except PackageNotFoundError:
        return "absent"


def filesystem(folder: Path) -> str:
    """The type of the filesystem holding ``folder`` (as `df -T` names it), or "?"."""
    try:
        out = subprocess.run(["df", "-T", str(folder)], capture_output=True, text=True).stdout
        return out.splitlines()[-1].split()[1]
    except (OSError, IndexError):
        return "?"


def git_commit(watched: Iterable[str] = ("deltaformat", "registry", "bench")) -> str:
    """The short commit of the checkout, noting uncommitted changes to the ``watched`` paths (the measured code)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", *watched], cwd=REPO, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"
    return commit + (" + uncommitted changes to the measured code" if dirty else "")


def describe(packages: Iterable[str] = (), folder: Path | None = None) -> dict[str, Any]:
    """The machine, this interpreter and the versions of ``packages``; the filesystem of ``folder`` when given.

    Keys: date, cpu, cores (online), usable_cores (this process's affinity), ram_gib, kernel, python,
    packages (name -> version), fs, load_start (1/5/15-minute load averages now)."""
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(), "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
        "ram_gib": memory_gib(), "kernel": platform.release(), "python": platform.python_version(),
        "packages": {p: package_version(p) for p in packages},
        "fs": filesystem(folder) if folder is not None else "?",
        "load_start": os.getloadavg(),
    }
