"""paramdelta mount (issue #13): a real FUSE mount of the ParamΔ model, compared with apply's output.

Each test runs ``paramdelta mount`` as a user does (a subprocess, real libfuse) on a
folder of its own, and checks that it leaves nothing mounted and no process running.
Skipped where FUSE cannot run (no mfusepy, no libfuse, no /dev/fuse): there the CLI's
message is what a user gets (tested below with a libfuse that cannot be found).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from test_lazy import minilm  # noqa: F401  (the module-scoped MiniLM fixture: base, post, new base, delta, apply output)

import deltaformat
from deltaformat.artifact import DIGEST_FILE, MANIFEST_FILE
from deltaformat.digests import blob_digest

PARAMDELTA = [sys.executable, "-m", "deltaformat.cli"]
SHARD = "40KB"  # the tiny model in several shards, with an index


# Only a machine without the kernel's FUSE device skips these (a container started without /dev/fuse).
# Where the device is there, `make test` has installed libfuse 3 and mfusepy: a missing one fails, loudly.
pytestmark = pytest.mark.skipif(not Path("/dev/fuse").exists(), reason="no /dev/fuse on this machine: FUSE mounts cannot run")


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def files_of(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _wait(predicate, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@contextmanager
def mounted(tmp_path: Path, artifacts: list[Path], base: Path, *extra: str):
    """``paramdelta mount --foreground`` in a subprocess; yields (process, mountpoint, log).
    Afterwards nothing may stay mounted or running, whatever the test did."""
    point, log = tmp_path / "mnt", tmp_path / "mount.log"
    point.mkdir(exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen([*PARAMDELTA, "mount", *map(str, artifacts), "--base", str(base), str(point),
                                 "--shard-size", SHARD, "--foreground", *extra], stdout=out, stderr=out)
    try:
        _wait(lambda: os.path.ismount(point) or proc.poll() is not None, "the mount")
        assert proc.poll() is None, log.read_text()
        yield proc, point, log
    finally:
        if os.path.ismount(point):
            subprocess.run(["fusermount3", "-u", "-z", str(point)], check=False)
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    assert not os.path.ismount(point)


def test_every_file_equals_apply_output_and_unmount_ends_the_process(artifacts, tmp_path):
    """New base (the ParamΔ case) and original base (paramdelta.json then records verified_exact)."""
    for base in (artifacts.newbase, artifacts.base):
        run = tmp_path / base.name
        run.mkdir()
        deltaformat.apply([artifacts.delta], base, run / "out", shard_size=SHARD, quiet=True)
        with mounted(run, [artifacts.delta], base) as (proc, point, _):
            assert files_of(point) == files_of(run / "out")
            assert len(list(point.glob("*.safetensors"))) > 1
            record = json.loads((point / "paramdelta.json").read_text())
            assert record["verified_exact"] is (base == artifacts.base)
            with pytest.raises(OSError) as written:
                (point / "config.json").write_text("{}")
            assert written.value.errno in (errno.EROFS, errno.EACCES)
            done = subprocess.run([*PARAMDELTA, "umount", str(point)], capture_output=True, text=True)
            assert done.returncode == 0, done.stderr
            assert proc.wait(timeout=30) == 0
            assert not os.path.ismount(point)


def test_transformers_loads_from_the_mount_with_identical_logits(artifacts, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    deltaformat.apply([artifacts.delta], artifacts.newbase, tmp_path / "out", shard_size=SHARD, quiet=True)
    reference = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    ids = torch.randint(3, 96, (2, 12), generator=torch.Generator().manual_seed(4))
    with mounted(tmp_path, [artifacts.delta], artifacts.newbase) as (_, point, _):
        # Run while mounted: from_pretrained may keep the weights memory-mapped from the mount.
        from_mount = AutoModelForCausalLM.from_pretrained(point)
        assert AutoTokenizer.from_pretrained(point).chat_template is not None
        with torch.no_grad():
            assert torch.equal(from_mount(input_ids=ids).logits, reference(input_ids=ids).logits)
        del from_mount


def test_safe_open_random_reads_and_two_concurrent_readers(artifacts, tmp_path):
    from safetensors import safe_open

    deltaformat.apply([artifacts.delta], artifacts.newbase, tmp_path / "out", shard_size=SHARD, quiet=True)
    expected = files_of(tmp_path / "out")
    with mounted(tmp_path, [artifacts.delta], artifacts.newbase, "--cache-size", "64KB") as (_, point, _):
        for shard in sorted(point.glob("*.safetensors")):
            with safe_open(shard, "pt") as got, safe_open(tmp_path / "out" / shard.name, "pt") as want:
                for name in reversed(list(want.keys())):  # out of file order, partial slices
                    rows = want.get_slice(name).get_shape()[0]
                    lo, hi = rows // 3, rows // 3 + max(1, rows // 4)
                    assert torch.equal(got.get_slice(name)[lo:hi].view(torch.int16), want.get_slice(name)[lo:hi].view(torch.int16)), name
        results: list[dict] = []
        readers = [threading.Thread(target=lambda: results.append(files_of(point))) for _ in range(2)]
        for r in readers:
            r.start()
        for r in readers:
            r.join(timeout=120)
        assert results == [expected, expected]


def test_sigterm_and_a_killed_reader_leave_nothing_mounted_or_running(artifacts, tmp_path):
    with mounted(tmp_path, [artifacts.delta], artifacts.newbase) as (proc, point, _):
        shard = next(point.glob("*.safetensors"))
        reader = subprocess.Popen([sys.executable, "-c", f"f = open({str(shard)!r}, 'rb'); f.read(4096); import time; time.sleep(600)"])
        time.sleep(0.5)
        reader.kill()  # a reader killed while holding a file open
        reader.wait(timeout=30)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        assert not os.path.ismount(point)


def test_background_mode_returns_once_mounted_and_umount_stops_it(artifacts, tmp_path):
    point, log = tmp_path / "mnt", tmp_path / "bg.log"
    point.mkdir()
    started = subprocess.run([*PARAMDELTA, "mount", str(artifacts.delta), "--base", str(artifacts.newbase), str(point),
                              "--log", str(log)], capture_output=True, text=True, timeout=120)
    try:
        assert started.returncode == 0, started.stderr
        assert os.path.ismount(point) and (point / "config.json").is_file()
        pid = int(started.stdout.split("(process ")[1].split(",")[0])
        assert subprocess.run([*PARAMDELTA, "umount", str(point)]).returncode == 0
        _wait(lambda: not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text(), "the mount process to end")
    finally:
        if os.path.ismount(point):
            subprocess.run(["fusermount3", "-u", "-z", str(point)], check=False)
    assert not os.path.ismount(point)


def test_a_tensor_differing_from_the_post_on_the_original_base_is_an_io_error(artifacts, tmp_path):
    art = tmp_path / "delta"
    shutil.copytree(artifacts.delta, art)
    doc = json.loads((art / MANIFEST_FILE).read_text())
    entries = {t["name"]: t for t in doc["tensors"]}
    victim = "model.layers.1.mlp.up_proj.weight"
    entries[victim]["post"]["digest"] = entries["model.layers.0.mlp.up_proj.weight"]["post"]["digest"]
    data = json.dumps(doc).encode()
    (art / MANIFEST_FILE).write_bytes(data)
    (art / DIGEST_FILE).write_text(blob_digest(data) + "\n")
    with mounted(tmp_path, [art], artifacts.base, "--shard-size", "1GB") as (_, point, log):
        with pytest.raises(OSError) as read:
            (point / "model.safetensors").read_bytes()
        assert read.value.errno == errno.EIO
        assert f"tensor '{victim}': the output differs from the post model" in log.read_text()


def test_without_fuse_the_message_points_at_apply(artifacts, tmp_path):
    (tmp_path / "mnt").mkdir()
    env = {**os.environ, "FUSE_LIBRARY_NAME": "no-such-fuse-library"}
    done = subprocess.run([*PARAMDELTA, "mount", str(artifacts.delta), "--base", str(artifacts.newbase),
                           str(tmp_path / "mnt"), "--foreground"], capture_output=True, text=True, env=env)
    assert done.returncode == 13
    assert "FUSE is not available here" in done.stderr and "paramdelta apply --out" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_minilm_mount_equals_apply_and_loads_in_transformers(minilm, tmp_path):  # noqa: F811
    from transformers import AutoModel

    deltaformat.apply([minilm / "delta"], minilm / "newbase", tmp_path / "out", shard_size="40MB", quiet=True)
    reference = AutoModel.from_pretrained(tmp_path / "out")
    ids = torch.randint(1000, 20000, (2, 16), generator=torch.Generator().manual_seed(3))
    with mounted(tmp_path, [minilm / "delta"], minilm / "newbase", "--shard-size", "40MB") as (_, point, _):
        assert files_of(point) == files_of(tmp_path / "out")
        from_mount = AutoModel.from_pretrained(point)  # may stay memory-mapped from the mount: used while mounted
        with torch.no_grad():
            assert torch.equal(from_mount(input_ids=ids).last_hidden_state, reference(input_ids=ids).last_hidden_state)
        del from_mount
