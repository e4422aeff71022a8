"""docker-compose.yml is valid for docker-compose 1.29 and wires what the registry needs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def config() -> dict:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail("docker-compose is not installed: run scripts/install-system-deps.sh")
    out = subprocess.run([exe, "-f", str(ROOT / "docker-compose.yml"), "config"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


def test_services_healthchecks_and_volumes(config):
    services = config["services"]
    assert set(services) == {"registry", "postgres", "minio", "create-bucket"}
    for name in ("registry", "postgres", "minio"):
        assert services[name]["healthcheck"]["test"], name
    assert services["registry"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["registry"]["depends_on"]["create-bucket"]["condition"] == "service_completed_successfully"
    assert set(config["volumes"]) == {"postgres-data", "minio-data"}
    for name in ("postgres", "minio", "create-bucket"):
        image = services[name]["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name} image must be pinned"


def test_registry_environment_is_what_the_settings_read(config):
    from registry.settings import Settings

    env = config["services"]["registry"]["environment"]
    known = {f"PARAMDELTA_{name.upper()}" for name in Settings.model_fields}
    ours = {k for k in env if k.startswith("PARAMDELTA_")}
    assert ours <= known, f"unknown settings: {ours - known}"
    assert env["PARAMDELTA_BLOB_STORE"].startswith("s3://")
    assert env["PARAMDELTA_DATABASE_URL"].startswith("postgresql")
