"""paramdelta's client against a real docker-registry with ``auth: token``: the Bearer challenge flow
(issue #12, item 2). A small real token server on loopback signs JWTs with a key whose certificate
the registry trusts; the client GETs the realm with the challenge's service and scope, with the
credentials `paramdelta login` stored (or none: anonymous pulls), keeps tokens per scope and
fetches a new one when the registry refuses an expired token."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import deltaformat
from deltaformat import client
from deltaformat.artifact import open_artifact
from deltaformat.errors import RegistryError
from paramdelta_dev.artifacts import Artifacts
from paramdelta_dev.distribution import distribution_registry
from paramdelta_dev.serve import RegistryServer
from paramdelta_dev.tiny_models import load_state
from paramdelta_dev.token_server import TokenServer, parse_scope, token_server

REF = "acme/tiny-chat:1.0"  # the name and version the `artifacts` fixture extracted
USER, PASSWORD = "alice", "token pass:word"
PUSH = ("repository", "acme/tiny-chat", {"pull", "push"})


def _scope(text: str) -> tuple[str, str, set[str]]:
    """A scope with its actions as a set: the registry's challenge lists them in no fixed order."""
    kind, name, actions = parse_scope(text)
    return kind, name, set(actions)


@pytest.fixture
def tokens(tmp_path: Path) -> Iterator[TokenServer]:
    with token_server(tmp_path / "tokens", {USER: PASSWORD}) as server:
        yield server


@pytest.fixture
def guarded(tmp_path: Path, tokens: TokenServer) -> Iterator[str]:
    """host:port of a docker-registry whose every request needs a token from ``tokens``."""
    with distribution_registry(tmp_path / "distribution", tokens=tokens) as host:
        yield host


def _cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PARAMDELTA_REGISTRY", "PARAMDELTA_TOKEN")}
    return subprocess.run([sys.executable, "-m", "deltaformat.cli", *args], input=stdin, capture_output=True,
                          text=True, env=env, timeout=300)


def _one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def test_login_push_pull_apply_through_the_token_flow(guarded: str, tokens: TokenServer, artifacts: Artifacts,
                                                      docker_config: Path, tmp_path: Path):
    login = _cli("login", guarded, "-u", USER, "--password-stdin", stdin=PASSWORD + "\n")
    assert login.returncode == 0, login.stderr
    assert tokens.requests[-1].user == USER and tokens.requests[-1].status == 200  # login got a token with them

    before = len(tokens.requests)
    pushed = _cli("push", str(artifacts.delta), f"{guarded}/{REF}", "-q")
    assert pushed.returncode == 0, pushed.stderr
    push_requests = tokens.requests[before:]
    assert all(r.user == USER and r.status == 200 for r in push_requests)
    assert any(PUSH in map(_scope, r.scopes) for r in push_requests)  # the scope the registry's challenge named
    blobs = len(open_artifact(artifacts.delta).manifest.blob_digests()) + 1
    assert len(push_requests) < blobs  # kept per scope: not a token per blob or per request

    pulled = _cli("pull", f"{guarded}/{REF}", "--out", str(tmp_path / "pulled"), "-q")
    assert pulled.returncode == 0, pulled.stderr
    assert deltaformat.verify(tmp_path / "pulled", base=artifacts.base, quiet=True).round_trip
    applied = _cli("apply", f"{guarded}/{REF}", "--base", str(artifacts.base), "--out", str(tmp_path / "model"), "-q")
    assert applied.returncode == 0, applied.stderr
    model, post = load_state(tmp_path / "model"), load_state(artifacts.post)
    assert model.keys() == post.keys() and all(model[k].equal(post[k]) for k in post)


def test_anonymous_pull_gets_a_pull_token_and_anonymous_push_is_refused(guarded: str, tokens: TokenServer,
                                                                        artifacts: Artifacts, docker_config: Path,
                                                                        tmp_path: Path):
    client.push(artifacts.delta, f"{guarded}/{REF}", quiet=True, credentials=(USER, PASSWORD))  # flags, not config
    assert not docker_config.exists()
    before = len(tokens.requests)
    art = client.fetch_artifact(f"{guarded}/{REF}")  # nothing stored: anonymous
    assert art.manifest_bytes == open_artifact(artifacts.delta).manifest_bytes
    anonymous = tokens.requests[before:]
    assert anonymous and all(r.user is None for r in anonymous)
    assert ["repository:acme/tiny-chat:pull"] in [r.scopes for r in anonymous]

    refused = _cli("push", str(artifacts.other), f"{guarded}/acme/tiny-other:1.0", "-q")
    assert refused.returncode == 9
    line = _one_line_error(refused)
    assert guarded in line and f"paramdelta login {guarded}" in line


def test_password_stdin_flags_push_without_a_stored_login(guarded: str, artifacts: Artifacts, docker_config: Path):
    done = _cli("push", str(artifacts.delta), f"{guarded}/{REF}", "-q", "-u", USER, "--password-stdin",
                stdin=PASSWORD + "\n")
    assert done.returncode == 0, done.stderr
    assert not docker_config.exists()  # used for this command only
    wrong = _cli("push", str(artifacts.delta), f"{guarded}/{REF}", "-q", "-u", USER, "--password-stdin", stdin="nope\n")
    assert wrong.returncode == 9 and f"credentials for {guarded} were refused" in _one_line_error(wrong)


def test_an_expired_token_is_replaced(tmp_path: Path, artifacts: Artifacts, docker_config: Path):
    with token_server(tmp_path / "tokens", {USER: PASSWORD}, expire_first=True) as tokens, \
            distribution_registry(tmp_path / "distribution", tokens=tokens) as host:
        pushed = client.push(artifacts.delta, f"{host}/{REF}", quiet=True, credentials=(USER, PASSWORD))
        assert client.fetch_manifest(f"{host}/{REF}").name == "acme/tiny-chat"
    granted = [r for r in tokens.requests if r.status == 200]
    # the first token was expired: the registry refused it, and the client fetched a fresh one for the same scope
    assert list(map(_scope, granted[0].scopes)) == list(map(_scope, granted[1].scopes))
    assert pushed.uploaded == len(open_artifact(artifacts.delta).manifest.blob_digests()) + 1


def test_search_lists_a_token_registry_from_its_catalog(guarded: str, artifacts: Artifacts, docker_config: Path):
    client.push(artifacts.delta, f"{guarded}/{REF}", quiet=True, credentials=(USER, PASSWORD))
    with pytest.raises(RegistryError, match=f"{guarded} needs a login"):  # the catalog is for users
        client.search(registry=guarded)
    page = client.search("tiny", registry=guarded, credentials=(USER, PASSWORD))
    assert [(i.name, i.latest_version) for i in page.items] == [("acme/tiny-chat", "1.0")]
    assert "no paramdelta search API" in page.notice


@pytest.fixture
def private_registry(tmp_path: Path) -> Iterator[RegistryServer]:
    """Our own registry with anonymous pull off: every /v2/ request without a token gets a Bearer challenge."""
    (tmp_path / "registry").mkdir()
    server = RegistryServer(tmp_path / "registry" / "data", args=("--no-anonymous-pull",)).start()
    try:
        yield server
    finally:
        server.stop()


def test_our_registry_bearer_challenge_is_answered_with_a_docker_style_login(private_registry: RegistryServer,
                                                                          artifacts: Artifacts, docker_config: Path,
                                                                          tmp_path: Path):
    srv = private_registry
    client.push(artifacts.delta, f"{srv.host}/{REF}", token=srv.token("acme", "push"), quiet=True)
    refused = _cli("pull", f"{srv.host}/{REF}", "--out", str(tmp_path / "refused"), "-q")
    assert refused.returncode == 9 and "PARAMDELTA_TOKEN" in _one_line_error(refused)  # our registry: a token is asked for

    # docker-style: the token as the password; the client trades it at the realm the challenge names
    login = _cli("login", srv.host, "-u", "ci", "--password-stdin", stdin=srv.token("acme", "pull") + "\n")
    assert login.returncode == 0, login.stderr
    pulled = _cli("pull", f"{srv.host}/{REF}", "--out", str(tmp_path / "pulled"), "-q")
    assert pulled.returncode == 0, pulled.stderr
    assert deltaformat.verify(tmp_path / "pulled", base=artifacts.base, quiet=True).round_trip
    assert '"GET /auth/token?service=paramdelta&scope=repository%3Aacme%2Ftiny-chat%3Apull' in srv.log_text()
