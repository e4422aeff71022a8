"""A real, stock OCI distribution registry (Debian's ``docker-registry``, distribution 2.8) on a
loopback port: a temp config with no auth section (so anonymous push is allowed), with
htpasswd auth for given users, or with token auth against a token server the test runs, and its own
storage folder, so a test talks to the registry the ecosystem runs rather than to ours."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from paramdelta_dev.ports import free_port
from paramdelta_dev.serve import START_TIMEOUT

if TYPE_CHECKING:
    from paramdelta_dev.token_server import TokenServer

SERVICE, ISSUER = "paramdelta-test-registry", "paramdelta-test-issuer"  # as paramdelta_dev.token_server signs them

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
{auth}"""

# distribution's htpasswd auth: bcrypt entries only (htpasswd -B), a Basic challenge on 401
HTPASSWD_AUTH = """\
auth:
  htpasswd:
    realm: paramdelta-test
    path: {path}
"""
HTPASSWD = Path("/usr/bin/htpasswd")

# distribution's token auth: a Bearer challenge naming the realm; tokens are JWTs whose x5c
# certificate chains to rootcertbundle (paramdelta_dev.token_server issues them)
TOKEN_AUTH = """\
auth:
  token:
    realm: {realm}
    service: {service}
    issuer: {issuer}
    rootcertbundle: {cert}
"""


@contextlib.contextmanager
def distribution_registry(folder: Path, users: dict[str, str] | None = None,
                          tokens: TokenServer | None = None) -> Iterator[str]:
    """Run docker-registry with its config and storage under ``folder``; yields its host:port.
    ``users`` (name -> password) turns on htpasswd auth: every request then needs basic credentials.
    ``tokens`` turns on token auth with that token server as the realm (Bearer challenges).
    Fails (not skips) without the binaries: CI installs them, and a skip would hide whole files."""
    if not BINARY.exists():
        pytest.fail(f"{BINARY} is missing: {INSTALL_HINT}")
    port = free_port()
    (folder / "storage").mkdir(parents=True, exist_ok=True)
    auth = HTPASSWD_AUTH.format(path=_htpasswd_file(folder, users)) if users else ""
    if tokens is not None:
        auth = TOKEN_AUTH.format(realm=tokens.realm, service=SERVICE, issuer=ISSUER, cert=tokens.cert_path)
    config = folder / "config.yml"
    config.write_text(CONFIG.format(root=folder / "storage", port=port, auth=auth))
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


def _htpasswd_file(folder: Path, users: dict[str, str]) -> Path:
    """A bcrypt htpasswd file made by apache2-utils' htpasswd (distribution accepts bcrypt only)."""
    if not HTPASSWD.exists():
        pytest.fail(f"{HTPASSWD} is missing: apt-get install -y apache2-utils (scripts/install-system-deps.sh installs it)")
    lines = [subprocess.run([str(HTPASSWD), "-Bbn", user, password], check=True, capture_output=True, text=True).stdout.strip()
             for user, password in users.items()]
    path = folder / "htpasswd"
    path.write_text("\n".join(lines) + "\n")
    return path


def _wait_ready(proc: subprocess.Popen, port: int, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited:\n{log_path.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=2).status_code in (200, 401):
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"docker-registry did not answer /v2/ within {START_TIMEOUT}s:\n"
                       f"{log_path.read_text(errors='replace')[-3000:]}")
