"""Shared fixtures: tiny real models and artifacts, and a real registry server process.

``registry_server`` runs ``paramdelta serve`` as a subprocess on a free loopback
port with its data in a temporary folder (one for the session; tests use their own
repository names). ``RegistryServer`` can also be started per test, and killed and
restarted on the same port and data.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

import deltaformat
from support.tiny_models import make_trio

START_TIMEOUT = 60.0  # seconds; generous, the machine is shared


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RegistryServer:
    """``paramdelta serve`` in a subprocess; its log (uvicorn access log included) is in ``log``."""

    def __init__(self, data: Path, *, port: int | None = None, args: tuple[str, ...] = ()):
        self.data, self.port, self.args = data, port or free_port(), args
        self.log = data.parent / f"{data.name}-server.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "RegistryServer":
        env = {k: v for k, v in os.environ.items() if not k.startswith("PARAMDELTA_")}
        cmd = [sys.executable, "-m", "deltaformat.cli", "serve", "--port", str(self.port), "--data", str(self.data), *self.args]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"registry exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"registry did not answer /healthz within {START_TIMEOUT}s:\n{self.log_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

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


@dataclass
class Artifacts:
    base: Path
    post: Path
    newbase: Path
    delta: Path  # base -> post
    other: Path  # base -> newbase: another artifact, for "different content" cases


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Artifacts:
    root = tmp_path_factory.mktemp("models")
    base, post, newbase = make_trio(root)
    delta, other = root / "delta", root / "other"
    deltaformat.extract(base, post, delta, name="acme/tiny-chat", version="1.0",
                        description="Tiny chat delta for tests", license="apache-2.0", quiet=True)
    deltaformat.extract(base, newbase, other, name="acme/tiny-other", version="1.0", description="Another delta", quiet=True)
    return Artifacts(base, post, newbase, delta, other)


@pytest.fixture(scope="session")
def registry_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    server = RegistryServer(tmp_path_factory.mktemp("registry") / "data").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def client_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A test's own download cache, and no registry settings from the environment (registry tests use it)."""
    for var in ("PARAMDELTA_REGISTRY", "PARAMDELTA_TOKEN", "PARAMDELTA_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv("PARAMDELTA_CACHE", str(cache))
    monkeypatch.setenv("PARAMDELTA_QUIET", "1")
    return cache
