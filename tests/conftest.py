"""Shared fixtures: tiny real models and artifacts, a real registry server process, and the scale-out
deployment (real PostgreSQL, Ceph S3 and two replicas).

``registry_server`` runs ``paramdelta serve`` as a subprocess on a free loopback port with its data
in a temporary folder (one for the session; tests use their own repository names).
``paramdelta_dev.serve.RegistryServer`` can also be started per test, and killed and restarted on
the same port and data. The classes live in ``paramdelta_dev``; this file only makes fixtures of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from paramdelta_dev.artifacts import Artifacts, make_artifacts
from paramdelta_dev.scaleout import Backends, Cluster, start_backends, start_cluster
from paramdelta_dev.serve import RegistryServer


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Artifacts:
    return make_artifacts(tmp_path_factory.mktemp("models"))


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


@pytest.fixture
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, client_env: Path) -> Path:
    """A test's own DOCKER_CONFIG folder (the CLI subprocesses inherit it); returns its config.json."""
    folder = tmp_path / "docker"
    monkeypatch.setenv("DOCKER_CONFIG", str(folder))
    return folder / "config.json"


@pytest.fixture(scope="session")
def scale_backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backends]:
    """One PostgreSQL and one Ceph S3 bucket for the whole run (started on first use)."""
    backends = start_backends(tmp_path_factory.mktemp("scaleout"))
    yield backends
    backends.s3.stop()
    backends.pg.stop()


@pytest.fixture(scope="session")
def cluster(scale_backends: Backends) -> Iterator[Cluster]:
    """Replicas A and B on ``scale_backends`` and the recording proxy (see paramdelta_dev.scaleout)."""
    c = start_cluster(scale_backends)
    yield c
    c.a.stop()
    c.b.stop()
    c.proxy.stop()
