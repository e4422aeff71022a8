"""End to end against a real registry process on loopback: publish, find, pull, apply,
and the rules around them (dedup, immutability, auth, pagination, integrity, concurrency,
offline use, a server restart in the middle of a pull)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

import deltaformat
from deltaformat import client
from deltaformat.artifact import open_artifact
from deltaformat.cache import Cache
from deltaformat.errors import CorruptBlobError, IncompatibleBaseError, OfflineError, RegistryError
from deltaformat.oci import parse_reference
from paramdelta_dev.artifacts import Artifacts
from paramdelta_dev.assertions import assert_bit_equal
from paramdelta_dev.renamed import renamed
from paramdelta_dev.serve import RegistryServer
from paramdelta_dev.tiny_models import load_state, new_model, save

pytestmark = pytest.mark.usefixtures("client_env")
RENAMED: list[Path] = []  # where push() keeps its renamed copies (set per session by _renamed_folder)


@pytest.fixture(autouse=True)
def _renamed_folder(tmp_path_factory: pytest.TempPathFactory) -> None:
    if not RENAMED:
        RENAMED.append(tmp_path_factory.mktemp("renamed"))


def push(artifact: Path, ref: str, **kw) -> client.PushResult:
    """client.push of ``artifact`` named for ``ref``: the registry refuses a manifest.json that names another."""
    parsed = parse_reference(ref)
    return client.push(renamed(artifact, parsed.name, parsed.tag, RENAMED[0]), ref, **kw)


def test_publish_search_pull_apply_reproduces_post_bit_for_bit(registry_server: RegistryServer, artifacts: Artifacts, tmp_path: Path):
    srv = registry_server
    ref = f"{srv.host}/acme/tiny-chat:1.0"
    pushed = push(artifacts.delta, ref, token=srv.token("acme", "push"))
    assert pushed.uploaded + pushed.skipped == len(open_artifact(artifacts.delta).manifest.blob_digests()) + 1

    found = client.search("tiny chat", registry=srv.url).items
    assert [d.name for d in found] == ["acme/tiny-chat"]
    assert found[0].latest_version == "1.0" and found[0].latest_digest == pushed.digest
    assert client.search(base="BASE", registry=srv.url).items[0].name == "acme/tiny-chat"  # base id, any case
    assert client.search("no such thing", registry=srv.url).items == []

    pulled = client.pull(ref, tmp_path / "pulled")
    assert pulled.pinned == f"{srv.host}/acme/tiny-chat@{pushed.digest}"
    assert pulled.artifact.manifest_bytes == open_artifact(artifacts.delta).manifest_bytes
    assert deltaformat.verify(tmp_path / "pulled").blobs == len(pulled.artifact.manifest.blob_digests())

    result = deltaformat.apply([ref], artifacts.base, tmp_path / "model", quiet=True)
    assert result.verified_exact
    assert_bit_equal(load_state(tmp_path / "model"), load_state(artifacts.post))


def test_second_push_of_the_same_blobs_uploads_nothing(registry_server: RegistryServer, artifacts: Artifacts):
    srv, token = registry_server, registry_server.token("acme", "push")
    first = push(artifacts.delta, f"{srv.host}/acme/dedup:1.0", token=token)
    assert first.skipped == 0 and first.uploaded_bytes == first.total_bytes
    uploads_before = srv.log_text().count("POST /v2/acme/dedup/blobs/uploads")

    again = push(artifacts.delta, f"{srv.host}/acme/dedup:1.0", token=token)
    new_version = push(artifacts.delta, f"{srv.host}/acme/dedup:1.1", token=token)

    assert (again.uploaded, again.uploaded_bytes, again.skipped) == (0, 0, first.uploaded)
    assert (new_version.uploaded, new_version.skipped) == (1, first.uploaded - 1)  # its manifest.json names 1.1
    assert again.digest == first.digest != new_version.digest
    assert srv.log_text().count("POST /v2/acme/dedup/blobs/uploads") == uploads_before + 1  # 1.1's manifest.json


def test_offline_mode_uses_the_cache_and_makes_no_network_call(registry_server: RegistryServer, artifacts: Artifacts,
                                                               monkeypatch: pytest.MonkeyPatch):
    srv = registry_server
    ref = f"{srv.host}/acme/offline:1.0"
    pushed = push(artifacts.delta, ref, token=srv.token("acme", "push"))

    monkeypatch.setenv("PARAMDELTA_OFFLINE", "1")
    with pytest.raises(OfflineError, match="never pulled"):
        client.fetch_artifact(ref)
    monkeypatch.delenv("PARAMDELTA_OFFLINE")
    client.fetch_artifact(ref)

    def no_network(*args, **kwargs):
        raise AssertionError("a network call was made with PARAMDELTA_OFFLINE=1")

    monkeypatch.setenv("PARAMDELTA_OFFLINE", "1")
    monkeypatch.setattr(httpx.HTTPTransport, "handle_request", no_network)
    monkeypatch.setattr(httpx.Client, "send", no_network)
    for offline_ref in (ref, f"{srv.host}/acme/offline@{pushed.digest}"):
        art = client.fetch_artifact(offline_ref)
        assert deltaformat.verify(art, base=artifacts.base).round_trip
    assert client.fetch_manifest(ref).name == "acme/offline"
    with pytest.raises(OfflineError):
        client.search(registry=srv.url)


def test_versions_are_immutable_and_latest_moves_to_the_newest(registry_server: RegistryServer, artifacts: Artifacts):
    srv, name = registry_server, "acme/immutable"
    token = srv.token("acme", "push")
    one = push(artifacts.delta, f"{srv.host}/{name}:1.0", token=token)
    assert push(artifacts.delta, f"{srv.host}/{name}:1.0", token=token).digest == one.digest  # idempotent

    with pytest.raises(RegistryError, match="immutable") as exc:
        push(artifacts.other, f"{srv.host}/{name}:1.0", token=token)
    assert exc.value.status == 409

    two = push(artifacts.other, f"{srv.host}/{name}:2.0", token=token)
    with client.RegistryClient(srv.url, token) as c:
        assert c.resolve(name, "latest")[0] == two.digest
        assert c.get_json("tags", f"/v2/{name}/tags/list", {})["tags"] == ["1.0", "2.0", "latest"]
        assert httpx.delete(f"{srv.url}/v2/{name}/manifests/2.0", headers={"Authorization": f"Bearer {token}"}).status_code == 202
        assert c.resolve(name, "latest")[0] == one.digest  # latest falls back when the newest goes

        with pytest.raises(RegistryError, match="published and deleted"):  # a deleted version is never reused
            push(artifacts.delta, f"{srv.host}/{name}:2.0", token=token)
        push(artifacts.other, f"{srv.host}/{name}:2.0", token=token)  # the same content restores it
        assert c.resolve(name, "latest")[0] == two.digest


def test_tokens_scopes_and_challenges(registry_server: RegistryServer, artifacts: Artifacts):
    srv, name = registry_server, "secure/model"
    push_token, pull_token, elsewhere = srv.token("secure", "push"), srv.token("secure", "pull"), srv.token("other", "push")

    anon = httpx.post(f"{srv.url}/v2/{name}/blobs/uploads/")
    assert anon.status_code == 401 and anon.json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert anon.headers["www-authenticate"] == (
        f'Bearer realm="{srv.url}/auth/token",service="paramdelta",scope="repository:{name}:pull,push"')
    for token, status in ((None, 401), (pull_token, 403), (elsewhere, 403), ("pdt_not-a-token", 401)):
        with pytest.raises(RegistryError) as exc:
            push(artifacts.delta, f"{srv.host}/{name}:1.0", token=token)
        assert exc.value.status == status, token

    pushed = push(artifacts.delta, f"{srv.host}/{name}:1.0", token=push_token)
    assert client.fetch_artifact(f"{srv.host}/{name}:1.0").manifest.name == name  # anonymous pull is on

    delete = f"{srv.url}/v2/{name}/manifests/{pushed.digest}"
    assert httpx.delete(delete).status_code == 401
    assert httpx.delete(delete, headers={"Authorization": f"Bearer {pull_token}"}).status_code == 403

    traded = httpx.get(f"{srv.url}/auth/token", auth=("anyone", push_token))  # docker-style Basic login
    assert traded.status_code == 200 and traded.json()["token"] == push_token

    log = srv.log_text()
    assert "pushed secure/model:1.0" in log and "token 'push:secure'" in log  # who pushed what
    assert not any(t in log for t in (push_token, pull_token, elsewhere))  # and never a token


def test_search_and_tags_paginate_with_cursors(registry_server: RegistryServer, artifacts: Artifacts):
    srv, token = registry_server, registry_server.token("page", "push")
    names = [f"page/d{i}" for i in range(5)]
    for name in names:
        push(artifacts.delta, f"{srv.host}/{name}:1.0", token=token)
    for version in ("1.1", "1.2"):
        push(artifacts.delta, f"{srv.host}/page/d0:{version}", token=token)

    seen, cursor, sizes = [], None, []
    while True:
        page = client.search(namespace="page", sort="name", limit=2, cursor=cursor, registry=srv.url)
        seen += [d.name for d in page.items]
        sizes.append(len(page.items))
        if not (cursor := page.next_cursor):
            break
    assert seen == names and sizes == [2, 2, 1]
    newest = client.search(namespace="page", limit=1, registry=srv.url).items[0]
    assert (newest.name, newest.latest_version) == ("page/d0", "1.2")

    first = httpx.get(f"{srv.url}/v2/page/d0/tags/list", params={"n": 2})
    assert first.json()["tags"] == ["1.0", "1.1"]
    link = first.headers["link"]
    assert link.endswith('>; rel="next"')
    second = httpx.get(srv.url + link[1:link.index(">")])
    assert second.json()["tags"] == ["1.2", "latest"] and "link" not in second.headers


def test_blob_range_requests(registry_server: RegistryServer, artifacts: Artifacts):
    srv = registry_server
    push(artifacts.delta, f"{srv.host}/acme/ranges:1.0", token=srv.token("acme", "push"))
    art = open_artifact(artifacts.delta)
    digest = max(art.manifest.blob_sizes().items(), key=lambda kv: kv[1])[0]
    data = (art.blob_dir / digest.removeprefix("sha256:")).read_bytes()
    url = f"{srv.url}/v2/acme/ranges/blobs/{digest}"

    head = httpx.head(url)
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(data)
    assert head.headers["docker-content-digest"] == digest and head.headers["accept-ranges"] == "bytes"
    part = httpx.get(url, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == data[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(data)}"
    assert httpx.get(url, headers={"Range": "bytes=-7"}).content == data[-7:]
    assert httpx.get(url, headers={"Range": f"bytes={len(data) - 3}-"}).content == data[-3:]
    beyond = httpx.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{len(data)}"
    assert httpx.get(url).content == data


def test_tampered_upload_is_rejected_and_nothing_is_stored(registry_server: RegistryServer):
    srv, name = registry_server, "tamper/upload"
    auth = {"Authorization": f"Bearer {srv.token('tamper', 'push')}"}
    data = b"the bytes the client meant" * 100
    claimed = "sha256:" + "0" * 64

    mono = httpx.post(f"{srv.url}/v2/{name}/blobs/uploads/", params={"digest": claimed}, content=data, headers=auth)
    assert mono.status_code == 400 and mono.json()["errors"][0]["code"] == "DIGEST_INVALID"
    assert "nothing was stored" in mono.json()["errors"][0]["message"]

    start = httpx.post(f"{srv.url}/v2/{name}/blobs/uploads/", headers=auth)
    location = srv.url + start.headers["location"]
    assert httpx.patch(location, content=data, headers={**auth, "Content-Range": f"0-{len(data) - 1}"}).status_code == 202
    final = httpx.put(location, params={"digest": claimed}, headers=auth)
    assert final.status_code == 400 and final.json()["errors"][0]["detail"]["expected"] == claimed
    assert httpx.get(location, headers=auth).status_code == 404  # the session is gone too
    assert httpx.head(f"{srv.url}/v2/{name}/blobs/{claimed}").status_code == 404


def test_tampered_download_is_detected(registry_server: RegistryServer, artifacts: Artifacts):
    srv = registry_server
    ref = f"{srv.host}/tamper/download:1.0"
    push(artifacts.delta, ref, token=srv.token("tamper", "push"))
    sizes = open_artifact(artifacts.delta).manifest.blob_sizes()
    victim = max(sizes, key=sizes.get)
    path = srv.blob_file(victim)
    original = path.read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0xFF  # same size: only the digest can tell
    path.write_bytes(bytes(damaged))

    try:
        with pytest.raises(CorruptBlobError, match=victim):
            client.fetch_artifact(ref)
        cache = Cache()
        assert not cache.has_blob(victim) and not cache.part_path(victim).exists()
    finally:  # the server is shared, and a later upload of this blob does not replace a stored one: repair it
        path.write_bytes(original)


def test_concurrent_pushes_and_pulls(registry_server: RegistryServer, artifacts: Artifacts, tmp_path: Path):
    srv, token = registry_server, registry_server.token("conc", "push")
    push(artifacts.delta, f"{srv.host}/conc/seed:1.0", token=token)
    with ThreadPoolExecutor(8) as pool:
        pushes = [pool.submit(push, artifacts.delta, f"{srv.host}/conc/r{i % 4}:1.0", token=token) for i in range(6)]
        pulls = [pool.submit(client.pull, f"{srv.host}/conc/seed:1.0", tmp_path / f"pull{i}") for i in range(3)]
        digests = {(i % 4, f.result().digest) for i, f in enumerate(pushes)}
        folders = [f.result().artifact.location for f in pulls]
    assert len(digests) == 4  # repeated pushes to one repository agree
    for folder in folders:
        deltaformat.verify(folder)
    for i in range(4):
        assert client.fetch_artifact(f"{srv.host}/conc/r{i}:1.0").manifest.name == f"conc/r{i}"

    # Two publishers race for one version with different content: exactly one wins.
    with ThreadPoolExecutor(2) as pool:
        racers = {path: pool.submit(push, path, f"{srv.host}/conc/race:1.0", token=token)
                  for path in (artifacts.delta, artifacts.other)}
    outcomes = {path: (f.exception() or f.result()) for path, f in racers.items()}
    winners = [r for r in outcomes.values() if isinstance(r, client.PushResult)]
    losers = [r for r in outcomes.values() if isinstance(r, RegistryError)]
    assert len(winners) == 1 and len(losers) == 1 and losers[0].status == 409
    with client.RegistryClient(srv.url) as c:
        assert c.resolve("conc/race", "1.0")[0] == winners[0].digest


class _KillOnce(httpx.HTTPTransport):
    """Kills the server (SIGKILL) right after the answer to the third blob request, then restarts it."""

    def __init__(self, server: RegistryServer):
        super().__init__()
        self.server, self.blobs, self.restart = server, 0, None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if "/blobs/" in request.url.path:
            self.blobs += 1
            if self.blobs == 3:
                self.server.stop(signal.SIGKILL)
                self.restart = threading.Thread(target=self.server.start)
                self.restart.start()
        return response


def test_a_pull_interrupted_by_a_server_restart_finishes_after_it(tmp_path: Path, artifacts: Artifacts):
    server = RegistryServer(tmp_path / "data").start()
    try:
        push(artifacts.delta, f"{server.host}/acme/restart:1.0", token=server.token("acme", "push"))
        transport = _KillOnce(server)
        with client.RegistryClient(server.url, transport=transport, workers=2, retries=20, backoff=0.2, max_delay=2.0) as c:
            digest, oci = c.resolve("acme/restart", "1.0")
            art = c.fetch("acme/restart", digest, oci, quiet=True)
        transport.restart.join()
        assert transport.restart is not None and server.proc is not None  # it really went down and came back
        assert deltaformat.verify(art, base=artifacts.base).round_trip
    finally:
        server.stop()


def test_find_deltas_for_a_base_and_preflight_before_any_blob_is_downloaded(registry_server: RegistryServer,
                                                                            artifacts: Artifacts, tmp_path: Path):
    srv = registry_server
    ref = f"{srv.host}/acme/preflight:1.0"
    push(artifacts.delta, ref, token=srv.token("acme", "push"))

    fits = client.compatible(artifacts.newbase, registry=srv.url).items  # another folder name, same shapes
    assert ("acme/preflight", "shapes") in {(i.name, i.match) for i in fits}
    assert client.preflight(ref, artifacts.newbase).name == "acme/preflight"

    wider = save(new_model(0, vocab=128), tmp_path / "wider-vocab")
    assert client.compatible(wider, registry=srv.url).items == []
    with pytest.raises(IncompatibleBaseError, match="model.embed_tokens.weight"):
        client.preflight(ref, wider)
    assert not (Cache().root / "blobs").exists()  # nothing was downloaded to find that out


def test_cli_token_push_search_pull(registry_server: RegistryServer, artifacts: Artifacts, tmp_path: Path, client_env: Path):
    srv = registry_server
    env = {**os.environ, "PARAMDELTA_CACHE": str(client_env), "PARAMDELTA_REGISTRY": srv.url}

    def cli(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "deltaformat.cli", *args], capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout

    token = cli("token", "create", "cli", "--scope", "push", "--data", str(srv.data)).strip()
    assert token.startswith("pdt_") and "\n" not in token  # stdout is the token alone, for scripts
    pushed = cli("push", str(renamed(artifacts.delta, "cli/tiny-chat", "2.0", tmp_path)), "cli/tiny-chat:2.0", "--token", token, "-q")
    assert pushed.startswith(f"pushed {srv.host}/cli/tiny-chat:2.0 sha256:")
    found = json.loads(cli("search", "--namespace", "cli", "--json"))
    assert [(d["name"], d["latest_version"]) for d in found["items"]] == [("cli/tiny-chat", "2.0")]
    assert "pulled" in cli("pull", "cli/tiny-chat:2.0", "--out", str(tmp_path / "pulled"), "-q")
    deltaformat.verify(tmp_path / "pulled")
