"""A real, stock OCI distribution registry (Debian's ``docker-registry``, distribution 2.8) on a
loopback port: a temp config with no auth section (so anonymous push is allowed) and its own
storage folder, so a test talks to the registry the ecosystem runs rather than to ours."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.serve import START_TIMEOUT, free_port

BINARY = Path("/usr/bin/docker-registry")
INSTALL_HINT = "apt-get install -y docker-registry (scripts/install-system-deps.sh installs it)"

CONFIG = """\
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""


@contextlib.contextmanager
def distribution_registry(folder: Path) -> Iterator[str]:
    """Run docker-registry with its config and storage under ``folder``; yields its host:port.
    Fails (not skips) without the binary: CI installs it, and a skip would hide this whole file."""
    if not BINARY.exists():
        pytest.fail(f"{BINARY} is missing: {INSTALL_HINT}")
    port = free_port()
    (folder / "storage").mkdir(parents=True, exist_ok=True)
    config = folder / "config.yml"
    config.write_text(CONFIG.format(root=folder / "storage", port=port))
    log_path = folder / "registry.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([str(BINARY), "serve", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        _wait_ready(proc, port, log_path)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(proc: subprocess.Popen, port: int, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited:\n{log_path.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"docker-registry did not answer /v2/ within {START_TIMEOUT}s:\n"
                       f"{log_path.read_text(errors='replace')[-3000:]}")
