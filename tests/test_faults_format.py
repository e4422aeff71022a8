"""Faults a real run meets: kill -9 in the middle of apply, and a full disk under extract,
apply and pull. Each ends in a one-line error (or, for kill -9, in a leftover that the
next run removes), with nothing half-written visible."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import deltaformat
from deltaformat import client
from deltaformat.errors import NoSpaceError

PARAMDELTA = [sys.executable, "-m", "deltaformat.cli"]
TENSORS, ELEMENTS = 24, 1 << 20  # 48 MB of bf16 a model: big enough to catch apply mid-write


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> tuple[Path, Path, Path]:
    """base, post and their artifact (named faults/big:1.0), a few tens of MB."""
    root = tmp_path_factory.mktemp("big")
    g = torch.Generator().manual_seed(0)
    base = {f"t{i}": torch.randn(ELEMENTS, generator=g).bfloat16() for i in range(TENSORS)}
    post = {k: (v.float() + 1e-2 * torch.randn(ELEMENTS, generator=g)).bfloat16() for k, v in base.items()}
    for name, tensors in (("base", base), ("post", post)):
        (root / name).mkdir()
        save_file(tensors, root / name / "model.safetensors")
    deltaformat.extract(root / "base", root / "post", root / "delta", name="faults/big", version="1.0", quiet=True)
    return root / "base", root / "post", root / "delta"


@contextlib.contextmanager
def small_disk(folder: Path, size: str, inodes: int | None = None) -> Iterator[Path]:
    """A real filesystem of ``size`` (tmpfs) at ``folder``, with at most ``inodes`` files and folders
    when given; always unmounted."""
    folder.mkdir()
    options = f"size={size}" + (f",nr_inodes={inodes}" if inodes else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def cli(*args: object, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*PARAMDELTA, *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "PARAMDELTA_DEBUG": "", **(env or {})})


def assert_one_line(proc: subprocess.CompletedProcess, code: int, text: str) -> None:
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("paramdelta: error:") and text in lines[0], proc.stderr


def test_kill_9_during_apply_leaves_no_output_and_the_next_run_cleans_up(big, tmp_path):
    base, _, delta = big
    out = tmp_path / "model"
    proc = subprocess.Popen([*PARAMDELTA, "apply", str(delta), "--base", str(base), "--out", str(out), "-q"],
                            env={**os.environ, "PARAMDELTA_WORKERS": "1"}, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not _has_written_data(tmp_path):
            assert proc.poll() is None and time.time() < deadline, "apply finished before it could be killed"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".model.tmp-")]
    assert not out.exists() and len(leftovers) == 1  # kill -9 runs no cleanup: the temp folder stays, hidden

    done = cli("apply", delta, "--base", base, "--out", out, "-q")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def _has_written_data(parent: Path) -> bool:
    """A temporary output folder whose shard has real bytes on disk (not only its planned, sparse size)."""
    for tmp in parent.glob(".model.tmp-*"):
        shard = tmp / "model.safetensors"
        with contextlib.suppress(FileNotFoundError):
            if shard.stat().st_blocks * 512 > 4 << 20:
                return True
    return False


def test_full_disk_during_extract_is_one_line_and_leaves_nothing(big, tmp_path):
    base, post, _ = big
    with small_disk(tmp_path / "disk", "4m") as disk:
        proc = cli("extract", "--base", base, "--post", post, "--out", disk / "a", "-q")
        assert_one_line(proc, NoSpaceError.exit_code, f"no space left on device writing {disk / 'a'}")
        assert list(disk.iterdir()) == []


def test_apply_refuses_before_writing_when_the_output_cannot_fit(big, tmp_path):
    base, _, delta = big
    with small_disk(tmp_path / "disk", "8m") as disk:
        proc = cli("apply", delta, "--base", base, "--out", disk / "model", "-q")
        assert_one_line(proc, NoSpaceError.exit_code, "not enough space")
        assert "bytes" in proc.stderr and "free" in proc.stderr
        assert list(disk.iterdir()) == []


def inodes_used(folder: Path) -> int:
    st = os.statvfs(folder)
    return st.f_files - st.f_ffree


def test_a_disk_that_fills_after_the_size_check_is_one_line_and_leaves_nothing(big, tmp_path):
    """The disk fills while apply writes, after its free-space check passed: here the filesystem runs out of
    files (inodes) at apply's last file, once every shard is written. One line, exit 12, nothing left."""
    base, _, delta = big
    args = ("apply", delta, "--base", base, "--shard-size", "8MB", "-q")
    with small_disk(tmp_path / "roomy", "256m") as roomy:  # how many files and folders a whole apply makes
        assert cli(*args, "--out", roomy / "model").returncode == 0
        needed = inodes_used(roomy)
    with small_disk(tmp_path / "disk", "256m", inodes=needed - 1) as disk:
        proc = cli(*args, "--out", disk / "model")
        assert_one_line(proc, NoSpaceError.exit_code, f"no space left on device writing {disk / 'model'}")
        assert list(disk.iterdir()) == []


def test_full_disk_during_pull_is_one_line_and_leaves_nothing(big, tmp_path, registry_server, client_env):
    _, _, delta = big
    ref = f"{registry_server.host}/faults/big:1.0"
    client.push(delta, ref, token=registry_server.token("faults", "push"), quiet=True)
    with small_disk(tmp_path / "disk", "4m") as disk:
        # The output on a small disk (the cache elsewhere): blobs are copied there and it fills.
        proc = cli("pull", ref, "--out", disk / "pulled", "-q")
        assert_one_line(proc, NoSpaceError.exit_code, f"no space left on device writing {disk / 'pulled'}")
        assert list(disk.iterdir()) == []
        # The cache on a small disk: refused before downloading, naming what is needed.
        proc = cli("pull", ref, "--out", tmp_path / "pulled", "-q", env={"PARAMDELTA_CACHE": str(disk / "cache")})
        assert_one_line(proc, NoSpaceError.exit_code, "not enough space for pull faults/big")
        assert not (tmp_path / "pulled").exists()
