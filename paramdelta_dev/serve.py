"""Servers as real subprocesses on loopback ports, for end-to-end tests and benchmarks.

``HttpProcess`` runs any command that answers HTTP (the benchmarks' floors); ``ServeProcess`` is
``paramdelta serve``. One class for every test that needs a running registry: the embedded default
(``RegistryServer`` here) and the scale-out replicas (``paramdelta_dev.scaleout.Replica``)
differ only in their arguments, environment and readiness probe.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from paramdelta_dev.ports import free_port

if TYPE_CHECKING:
    from typing_extensions import Self

START_TIMEOUT = 90.0  # seconds; generous, the machine is shared


class HttpProcess:
    """A child process answering HTTP on 127.0.0.1:``port``, ready once ``probe`` answers 200; its output goes to ``log``."""

    probe = "/healthz"

    def __init__(self, name: str, log: Path, env: dict[str, str] | None, port: int | None = None, *,
                 command: list[str] | None = None, probe: str | None = None, cwd: Path | None = None):
        self.name, self.log, self.env, self.cwd = name, log, env, cwd
        self.port = port or free_port()
        self._command = command
        if probe is not None:
            self.probe = probe
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        if self._command is None:
            raise TypeError(f"{self.name}: no command given")
        return self._command

    def launch(self) -> Self:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=self.env, cwd=self.cwd)
        return self

    def wait_ready(self) -> Self:
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

    def start(self) -> Self:
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


class ServeProcess(HttpProcess):
    """A ``paramdelta serve`` child process; its output (access log included) goes to ``log``."""

    def __init__(self, name: str, log: Path, args: tuple[str, ...], env: dict[str, str], port: int | None = None):
        super().__init__(name, log, env, port)
        self.args = args

    def command(self) -> list[str]:
        return [sys.executable, "-m", "deltaformat.cli", "serve", "--port", str(self.port), *self.args]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without PARAMDELTA_* settings (a server or client configured only by its
    arguments), plus ``extra``."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PARAMDELTA_")} | extra


class RegistryServer(ServeProcess):
    """The embedded default (SQLite + a blob folder in ``data``), with no PARAMDELTA_* from the environment."""

    def __init__(self, data: Path, *, port: int | None = None, args: tuple[str, ...] = ()):
        super().__init__("registry", data.parent / f"{data.name}-server.log", ("--data", str(data), *args), clean_env(), port)
        self.data = data

    def token(self, namespace: str, scope: str) -> str:
        """A new token, created in the server's database the way `paramdelta token create` does."""
        from registry.auth import create_token
        from registry.db import Database
        from registry.settings import Settings

        db = Database(Settings(data=self.data).resolved_database_url())
        try:
            return create_token(db, namespace, scope)
        finally:
            db.dispose()

    def blob_file(self, digest: str) -> Path:
        """Where the filesystem driver keeps a blob (for tests that damage it)."""
        hex_ = digest.removeprefix("sha256:")
        return self.data / "blobs" / "blobs" / "sha256" / hex_[:2] / hex_
