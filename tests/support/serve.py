"""``paramdelta serve`` as a real subprocess on a loopback port, for end-to-end tests.

One class for every test that needs a running registry: the embedded default
(``RegistryServer`` in conftest) and the scale-out replicas (``Replica`` in
scaleout_fixtures) differ only in their arguments, environment and readiness probe.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

START_TIMEOUT = 90.0  # seconds; generous, the machine is shared


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """A ``paramdelta serve`` child process; its output (access log included) goes to ``log``."""

    probe = "/healthz"

    def __init__(self, name: str, log: Path, args: tuple[str, ...], env: dict[str, str], port: int | None = None):
        self.name, self.log, self.args, self.env = name, log, args, env
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def launch(self):
        cmd = [sys.executable, "-m", "deltaformat.cli", "serve", "--port", str(self.port), *self.args]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env)
        return self

    def wait_ready(self):
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}{self.probe}", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer {self.probe} within {START_TIMEOUT}s:\n{self.log_text()[-3000:]}")

    def start(self):
        return self.launch().wait_ready()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""
