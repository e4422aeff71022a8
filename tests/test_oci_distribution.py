"""paramdelta's client against a stock OCI distribution registry (Debian's ``docker-registry``), anonymously.

Distribution ignores the body of a monolithic ``POST ?digest=`` and answers 202 with an upload
session: push must fall back to POST + PUT (and chunked PATCH for big blobs), skip what is there
without our ``blobs/_present`` extension, and pull/apply must work without our /api/v1.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import deltaformat
from deltaformat import client
from deltaformat.artifact import blob_path, open_artifact
from paramdelta_dev.artifacts import Artifacts
from paramdelta_dev.distribution import distribution_registry
from paramdelta_dev.renamed import renamed
from paramdelta_dev.tiny_models import load_state

REF = "acme/tiny-chat:1.0"  # the name and version the `artifacts` fixture extracted


@pytest.fixture
def stock(tmp_path: Path) -> Iterator[str]:
    """host:port of a fresh docker-registry, no auth configured (anonymous push allowed)."""
    with distribution_registry(tmp_path / "distribution") as host:
        yield host


def _blob_count(artifact: Path) -> int:
    return len(open_artifact(artifact).manifest.blob_digests()) + 1  # + manifest.json, the config blob


def _largest_blob(artifact: Path) -> int:
    art = open_artifact(artifact)
    return max(blob_path(art.blob_dir, d).stat().st_size for d in art.manifest.blob_digests())


def _pull_and_check(host: str, artifacts: Artifacts, out: Path) -> None:
    """Pull into the test's fresh cache and prove base + Δ gives the post model back bit for bit."""
    pulled = client.pull(f"{host}/{REF}", out)
    assert pulled.artifact.manifest_bytes == open_artifact(artifacts.delta).manifest_bytes
    report = deltaformat.verify(out, base=artifacts.base, quiet=True)
    assert report.round_trip and report.blobs == _blob_count(artifacts.delta) - 1


@pytest.mark.parametrize("chunked", [False, True], ids=["whole-blobs", "chunked"])
def test_push_pull_verify_against_stock_registry(stock: str, artifacts: Artifacts, tmp_path: Path, client_env: Path,
                                                 chunked: bool):
    # chunked: a chunk a third of the largest blob, so that blob goes in several PATCHes
    chunk = max(1, _largest_blob(artifacts.delta) // 3) if chunked else client.CHUNK_BYTES
    pushed = client.push(artifacts.delta, f"{stock}/{REF}", quiet=True, chunk_bytes=chunk)
    assert (pushed.uploaded, pushed.skipped) == (_blob_count(artifacts.delta), 0)
    assert pushed.reference == f"{stock}/{REF}"
    patches = (tmp_path / "distribution" / "registry.log").read_text().count('"PATCH /v2/acme/tiny-chat/blobs/uploads/')
    assert (patches >= 3) == chunked  # the largest blob went in (at least) three PATCHes, and only when chunked
    _pull_and_check(stock, artifacts, tmp_path / "pulled")


def test_monolithic_refusal_is_remembered_for_later_blobs(stock: str, artifacts: Artifacts, tmp_path: Path, client_env: Path):
    client.push(artifacts.delta, f"{stock}/{REF}", quiet=True, workers=1)  # one at a time: no race for the first answer
    access_log = (tmp_path / "distribution" / "registry.log").read_text()
    monolithic = access_log.count('"POST /v2/acme/tiny-chat/blobs/uploads/?digest=')
    sessions = access_log.count('"POST /v2/acme/tiny-chat/blobs/uploads/ HTTP')
    # the first blob learns distribution answers 202 to a body; the others open a session right away
    assert (monolithic, sessions) == (1, _blob_count(artifacts.delta) - 1)


def test_repush_skips_blobs_already_there(stock: str, artifacts: Artifacts, client_env: Path):
    first = client.push(artifacts.delta, f"{stock}/{REF}", quiet=True)
    again = client.push(artifacts.delta, f"{stock}/{REF}", quiet=True)  # distribution has no _present: HEADs
    assert (again.uploaded, again.skipped, again.digest) == (0, _blob_count(artifacts.delta), first.digest)


def _cli(env_cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PARAMDELTA_CACHE": str(env_cache), "PARAMDELTA_QUIET": "1"}
    env.pop("PARAMDELTA_REGISTRY", None)
    env.pop("PARAMDELTA_TOKEN", None)
    return subprocess.run([sys.executable, "-m", "deltaformat.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_cli_apply_from_stock_registry_reproduces_post(stock: str, artifacts: Artifacts, tmp_path: Path, client_env: Path):
    client.push(artifacts.delta, f"{stock}/{REF}", quiet=True)
    # apply pre-flights the base from manifest.json before any blob: without /api/v1 it comes from the config blob
    done = _cli(client_env, "apply", f"{stock}/{REF}", "--base", str(artifacts.base), "--out", str(tmp_path / "model"))
    assert done.returncode == 0, done.stderr
    assert "bit-exact" in done.stdout
    applied, post = load_state(tmp_path / "model"), load_state(artifacts.post)
    assert applied.keys() == post.keys()
    assert all(applied[k].dtype == post[k].dtype and applied[k].equal(post[k]) for k in post)


def test_cli_search_lists_a_stock_registry_from_catalog_tags_and_annotations(stock: str, artifacts: Artifacts,
                                                                             client_env: Path):
    client.push(artifacts.delta, f"{stock}/{REF}", quiet=True)
    client.push(artifacts.other, f"{stock}/acme/tiny-other:1.0", quiet=True)
    done = _cli(client_env, "search", "tiny chat", "--registry", f"http://{stock}", "--json")
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "no paramdelta search API" in lines[0] and stock in lines[0] and "/v2/_catalog" in lines[0]
    manifest = open_artifact(artifacts.delta).manifest
    [found] = json.loads(done.stdout)["items"]  # "tiny chat" is in the first delta's description only
    assert (found["name"], found["latest_version"], found["base_id"], found["base_fingerprint"], found["post_id"]) == (
        "acme/tiny-chat", "1.0", manifest.base.id, manifest.base.fingerprint, manifest.post.id)


def test_stock_search_is_bounded_and_says_where_it_stopped(stock: str, artifacts: Artifacts, client_env: Path,
                                                           monkeypatch: pytest.MonkeyPatch):
    from deltaformat import catalog

    client.push(artifacts.delta, f"{stock}/{REF}", quiet=True)
    client.push(artifacts.other, f"{stock}/acme/tiny-other:1.0", quiet=True)
    monkeypatch.setattr(catalog, "MAX_MANIFESTS", 1)
    first = client.search(registry=stock)
    assert [i.name for i in first.items] == ["acme/tiny-chat"] and first.next_cursor == "acme/tiny-chat"
    assert "stopped after 1 manifests" in first.notice
    rest = client.search(registry=stock, cursor=first.next_cursor)
    assert [i.name for i in rest.items] == ["acme/tiny-other"] and rest.next_cursor is None


def test_annotations_tell_a_plain_oci_client_what_the_delta_is(stock: str, artifacts: Artifacts, client_env: Path):
    import httpx

    pushed = client.push(artifacts.delta, f"{stock}/{REF}", quiet=True)
    answer = httpx.get(f"http://{stock}/v2/acme/tiny-chat/manifests/1.0",
                       headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    oci = answer.json()
    manifest = open_artifact(artifacts.delta).manifest
    assert answer.headers["docker-content-digest"] == pushed.digest
    assert oci["artifactType"] == "application/vnd.paramdelta.delta.v1"
    assert {k: oci["annotations"][k] for k in ("vnd.paramdelta.base.id", "vnd.paramdelta.base.fingerprint",
                                                 "vnd.paramdelta.post.id", "vnd.paramdelta.format.version")} == {
        "vnd.paramdelta.base.id": manifest.base.id, "vnd.paramdelta.base.fingerprint": manifest.base.fingerprint,
        "vnd.paramdelta.post.id": manifest.post.id, "vnd.paramdelta.format.version": str(manifest.format_version)}


def test_blobs_seen_in_another_repository_are_mounted_not_sent(stock: str, artifacts: Artifacts, tmp_path: Path,
                                                               client_env: Path, monkeypatch: pytest.MonkeyPatch):
    client.push(artifacts.delta, f"{stock}/{REF}", quiet=True)
    # another machine: a fresh cache that only pulled acme/tiny-chat, then pushes a new version under a new name
    monkeypatch.setenv("PARAMDELTA_CACHE", str(tmp_path / "other-cache"))
    client.pull(f"{stock}/{REF}", tmp_path / "pulled")
    copy = renamed(artifacts.delta, "acme/tiny-chat-copy", "2.0", into=tmp_path / "copies")
    layers = open_artifact(copy).manifest.blob_digests()
    config_size = len((copy / "manifest.json").read_bytes())
    pushed = client.push(copy, f"{stock}/acme/tiny-chat-copy:2.0", quiet=True)
    assert (pushed.mounted, pushed.uploaded, pushed.uploaded_bytes) == (len(layers), 1, config_size)  # manifest.json only
    log = (tmp_path / "distribution" / "registry.log").read_text()
    mounts = re.findall(r'"POST /v2/acme/tiny-chat-copy/blobs/uploads/\?mount=sha256%3A[0-9a-f]{64}&from=acme%2Ftiny-chat ', log)
    assert len(mounts) == len(layers)
    assert log.count('"PUT /v2/acme/tiny-chat-copy/blobs/uploads/') == 1  # the layers' bytes were not sent again
    assert log.count('"PATCH /v2/acme/tiny-chat-copy/blobs/uploads/') == 0
    monkeypatch.setenv("PARAMDELTA_CACHE", str(tmp_path / "third-cache"))
    report = deltaformat.verify(client.pull(f"{stock}/acme/tiny-chat-copy:2.0", tmp_path / "copy").artifact,
                                base=artifacts.base, quiet=True)
    assert report.round_trip  # the mounted blobs are real blobs of the new repository
