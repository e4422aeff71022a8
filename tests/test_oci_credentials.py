"""Credentials for any OCI registry: a real docker-registry with htpasswd auth on loopback, docker's
config.json (written by `paramdelta login` or by hand), `paramdelta logout`, and credentials that
never leave the host they were stored for (issue #12, item 2)."""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import deltaformat
from deltaformat import client
from deltaformat.errors import RegistryError
from paramdelta_dev.artifacts import Artifacts
from paramdelta_dev.distribution import distribution_registry
from paramdelta_dev.tiny_models import load_state

REF = "acme/tiny-chat:1.0"  # the name and version the `artifacts` fixture extracted
USER, PASSWORD = "alice", "s3cret pass:word"  # a space and a colon: the password is everything after the first ':'


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[str]:
    """host:port of a fresh docker-registry that lets in only USER with PASSWORD (htpasswd, Basic)."""
    with distribution_registry(tmp_path / "distribution", users={USER: PASSWORD}) as host:
        yield host


def _cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PARAMDELTA_REGISTRY", "PARAMDELTA_TOKEN")}
    return subprocess.run([sys.executable, "-m", "deltaformat.cli", *args], input=stdin, capture_output=True,
                          text=True, env=env, timeout=300)


def _login(host: str, password: str = PASSWORD) -> subprocess.CompletedProcess[str]:
    return _cli("login", host, "-u", USER, "--password-stdin", stdin=password + "\n")


def _one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def _push_and_apply(host: str, artifacts: Artifacts, out: Path) -> None:
    """Push, pull + verify the round trip, and apply HOST/REF bit-exact on the base, all through the CLI."""
    pushed = _cli("push", str(artifacts.delta), f"{host}/{REF}", "-q")
    assert pushed.returncode == 0, pushed.stderr
    pulled = _cli("pull", f"{host}/{REF}", "--out", str(out / "pulled"), "-q")
    assert pulled.returncode == 0, pulled.stderr
    assert deltaformat.verify(out / "pulled", base=artifacts.base, quiet=True).round_trip
    applied = _cli("apply", f"{host}/{REF}", "--base", str(artifacts.base), "--out", str(out / "model"), "-q")
    assert applied.returncode == 0, applied.stderr
    model, post = load_state(out / "model"), load_state(artifacts.post)
    assert model.keys() == post.keys() and all(model[k].equal(post[k]) for k in post)


def test_anonymous_push_is_refused_naming_the_host_and_login(locked: str, artifacts: Artifacts, docker_config: Path):
    done = _cli("push", str(artifacts.delta), f"{locked}/{REF}", "-q")
    assert done.returncode == 9
    line = _one_line_error(done)
    assert locked in line and f"paramdelta login {locked}" in line


def test_login_stores_0600_config_then_push_pull_apply(locked: str, artifacts: Artifacts, docker_config: Path,
                                                       tmp_path: Path):
    docker_config.parent.mkdir()
    docker_config.write_text(json.dumps({"auths": {}, "psFormat": "table {{.ID}}"}))  # other keys are kept
    done = _login(locked)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(docker_config.stat().st_mode) == 0o600
    config = json.loads(docker_config.read_text())
    assert config["psFormat"] == "table {{.ID}}"
    assert base64.b64decode(config["auths"][locked]["auth"]).decode() == f"{USER}:{PASSWORD}"
    assert [p.name for p in docker_config.parent.iterdir()] == ["config.json"]  # no temp file left
    _push_and_apply(locked, artifacts, tmp_path)


def test_hand_written_docker_config_works(locked: str, artifacts: Artifacts, docker_config: Path, tmp_path: Path):
    # the way `docker login` writes it: the key with a scheme, tab-indented, other entries around it
    docker_config.parent.mkdir()
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    docker_config.write_text(json.dumps({"auths": {f"https://{locked}": {"auth": auth},
                                                   "ghcr.io": {"auth": base64.b64encode(b"x:y").decode()}}}, indent="\t"))
    _push_and_apply(locked, artifacts, tmp_path)


def test_wrong_password_login_fails_in_one_line_and_writes_nothing(locked: str, docker_config: Path):
    done = _login(locked, password="wrong")
    assert done.returncode == 9
    line = _one_line_error(done)
    assert locked in line and "refused" in line
    assert not docker_config.exists()


def test_wrong_stored_password_is_named_on_push(locked: str, artifacts: Artifacts, docker_config: Path):
    docker_config.parent.mkdir()
    docker_config.write_text(json.dumps({"auths": {locked: {"auth": base64.b64encode(f"{USER}:nope".encode()).decode()}}}))
    done = _cli("push", str(artifacts.delta), f"{locked}/{REF}", "-q")
    assert done.returncode == 9
    line = _one_line_error(done)
    assert f"credentials for {locked} were refused" in line


def test_logout_removes_the_entry_and_push_fails_again(locked: str, artifacts: Artifacts, docker_config: Path):
    assert _login(locked).returncode == 0
    done = _cli("logout", locked)
    assert done.returncode == 0, done.stderr
    assert json.loads(docker_config.read_text())["auths"] == {}
    pushed = _cli("push", str(artifacts.delta), f"{locked}/{REF}", "-q")
    assert pushed.returncode == 9 and f"paramdelta login {locked}" in _one_line_error(pushed)


def test_credential_helper_is_refused_naming_it(locked: str, artifacts: Artifacts, docker_config: Path):
    docker_config.parent.mkdir()
    docker_config.write_text(json.dumps({"auths": {locked: {}}, "credsStore": "desktop"}))
    with pytest.raises(RegistryError, match="docker-credential-desktop"):
        client.push(artifacts.delta, f"{locked}/{REF}", quiet=True)


class _Challenger(http.server.BaseHTTPRequestHandler):
    """Records the Authorization headers it gets; answers 401 with a Basic challenge, or, given the
    right credentials and a ``redirect_to``, redirects there (as a registry redirects to a blob store)."""

    seen: list[str | None]
    redirect_to: str | None = None

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        got = self.headers.get("Authorization")
        self.seen.append(got)
        if self.redirect_to and got == "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode():
            self.send_response(307)
            self.send_header("Location", f"http://{self.redirect_to}{self.path}")
        else:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="other"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def _challenger(redirect_to: str | None = None) -> Iterator[tuple[str, list[str | None]]]:
    """(host:port, Authorization headers seen) of a tiny loopback server: a registry we do not run."""
    seen: list[str | None] = []
    handler = type("Handler", (_Challenger,), {"seen": seen, "redirect_to": redirect_to})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def challenger() -> Iterator[tuple[str, list[str | None]]]:
    with _challenger() as found:
        yield found


def test_credentials_are_sent_only_to_their_host(locked: str, docker_config: Path,
                                                 challenger: tuple[str, list[str | None]]):
    other, seen = challenger  # same address, another port: another registry as far as credentials go
    assert _login(locked).returncode == 0
    with pytest.raises(RegistryError, match=f"{other} needs a login"):
        client.fetch_manifest(f"{other}/{REF}")
    assert seen and seen == [None] * len(seen)  # asked for Basic, and still got nothing


def test_credentials_are_not_sent_to_a_redirect_target(docker_config: Path, challenger: tuple[str, list[str | None]]):
    target, seen_by_target = challenger
    with _challenger(redirect_to=target) as (registry, seen_by_registry):
        docker_config.parent.mkdir()
        auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        docker_config.write_text(json.dumps({"auths": {registry: {"auth": auth}}}))
        with pytest.raises(RegistryError, match="HTTP 401"):
            client.fetch_manifest(f"{registry}/{REF}")
    assert seen_by_registry[:2] == [None, f"Basic {auth}"]  # challenged, then answered with the stored entry
    assert seen_by_target and seen_by_target == [None] * len(seen_by_target)  # the redirect went there bare
