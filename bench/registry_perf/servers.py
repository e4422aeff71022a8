"""Server child processes on loopback: the registry and the floors."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from bench.registry_perf.config import ROOT


class Server:
    """A child process answering HTTP on 127.0.0.1:port; its output goes to a log file."""

    def __init__(self, name: str, cmd: list[str], port: int, log: Path, probe: str = "/", env: dict | None = None):
        self.name, self.cmd, self.port, self.log, self.probe = name, cmd, port, log, probe
        self.env = env
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> Server:
        import httpx

        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=self.env, cwd=ROOT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: see {self.log}")
            try:
                httpx.get(self.url + self.probe, timeout=1)
                return self
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer within {timeout}s: see {self.log}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
