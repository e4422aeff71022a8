"""Shared fixtures: tiny real models and artifacts, and a real registry server process.

``registry_server`` runs ``paramdelta serve`` as a subprocess on a free loopback
port with its data in a temporary folder (one for the session; tests use their own
repository names). ``RegistryServer`` can also be started per test, and killed and
restarted on the same port and data.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import deltaformat
from support.serve import ServeProcess
from support.tiny_models import make_trio


class RegistryServer(ServeProcess):
    """The embedded default (SQLite + a blob folder in ``data``), with no PARAMDELTA_* from the environment."""

    def __init__(self, data: Path, *, port: int | None = None, args: tuple[str, ...] = ()):
        env = {k: v for k, v in os.environ.items() if not k.startswith("PARAMDELTA_")}
        super().__init__("registry", data.parent / f"{data.name}-server.log", ("--data", str(data), *args), env, port)
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
