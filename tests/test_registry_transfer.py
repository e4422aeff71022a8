"""Transfers: cut connections resume where they stopped (real server, a proxy that cuts),
and the client's retry, redirect and token rules (scripted HTTP answers)."""

from __future__ import annotations

import hashlib
import os
import re
import threading
from pathlib import Path

import httpx
import pytest

from deltaformat.cache import Cache
from deltaformat.client import RegistryClient, _endpoint
from deltaformat.errors import RegistryError
from deltaformat.oci import CHUNK_MEDIA_TYPE, Descriptor, parse_reference
from paramdelta_dev.loopback_proxy import LoopbackProxy
from paramdelta_dev.renamed import renamed
from paramdelta_dev.serve import RegistryServer

pytestmark = pytest.mark.usefixtures("client_env")


class CuttingProxy(LoopbackProxy):
    """A loopback TCP proxy that can cut the next connection after N bytes in one direction.

    Everything clients send is recorded in ``sent``, so a test can see the requests made.
    """

    def __init__(self, target_port: int):
        self.sent = bytearray()
        self._plan: tuple[str, int] | None = None
        self._lock = threading.Lock()
        super().__init__(target_port)

    def cut_next(self, direction: str, after: int) -> None:
        """Cut the next connection once ``after`` bytes went ``up`` (to the server) or ``down``."""
        self._plan = (direction, after)

    def next_cut(self) -> tuple[str, int] | None:
        with self._lock:
            plan, self._plan = self._plan, None
        return plan

    def on_data(self, way: str, data: bytes) -> None:
        if way == "up":
            with self._lock:
                self.sent += data


@pytest.fixture
def proxy(registry_server: RegistryServer):
    p = CuttingProxy(registry_server.port)
    yield p
    p.close()


def _put_blob(server: RegistryServer, name: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    token = server.token(name.split("/")[0], "push")
    r = httpx.post(f"{server.url}/v2/{name}/blobs/uploads/", params={"digest": digest}, content=data,
                   headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 201, r.text
    return digest


def test_a_download_cut_halfway_resumes_where_it_stopped(registry_server: RegistryServer, proxy: CuttingProxy):
    data = os.urandom(3 << 20)
    blob = Descriptor(mediaType=CHUNK_MEDIA_TYPE, digest=_put_blob(registry_server, "resume/download", data), size=len(data))
    proxy.cut_next("down", 1 << 20)

    with RegistryClient(proxy.url, retries=0) as first:  # gives up at the cut, as a killed process would
        with pytest.raises(RegistryError):
            first.download_blob("resume/download", blob)
    part = Cache().part_path(blob.digest)
    kept = part.stat().st_size
    assert 0 < kept < len(data)

    with RegistryClient(proxy.url) as second:
        path = second.download_blob("resume/download", blob)
    assert path.read_bytes() == data and not part.exists()
    assert f"range: bytes={kept}-".encode() in bytes(proxy.sent).lower()


def test_an_upload_cut_halfway_resumes_the_same_session(registry_server: RegistryServer, proxy: CuttingProxy, tmp_path: Path):
    name, chunk = "resume/upload", 256 << 10
    data = os.urandom(4 * chunk)
    source = tmp_path / "blob"
    source.write_bytes(data)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    token = registry_server.token("resume", "push")
    proxy.cut_next("up", chunk + chunk // 2)  # in the middle of the second chunk

    with RegistryClient(proxy.url, token, chunk_bytes=chunk, retries=0) as first:
        with pytest.raises(RegistryError):
            first.upload_blob(name, digest, len(data), source)
    with RegistryClient(proxy.url, token, chunk_bytes=chunk) as second:  # a later run, same cache
        assert second.upload_blob(name, digest, len(data), source)

    sent = bytes(proxy.sent).lower()
    starts = [int(s) for s in re.findall(rb"content-range: (\d+)-", sent)]
    assert sent.count(f"post /v2/{name}/blobs/uploads/".encode()) == 1  # one session, continued
    assert f"get /v2/{name}/blobs/uploads/".encode() in sent  # asked where it stood
    assert starts.count(0) == 1 and starts == sorted(starts)  # never started over
    assert httpx.get(f"{registry_server.url}/v2/{name}/blobs/{digest}").content == data


# -- the client's rules, against scripted answers ---------------------------------------------


def _scripted(*answers: httpx.Response):
    calls: list[httpx.Request] = []
    queue = list(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return queue.pop(0)

    return httpx.MockTransport(handler), calls


def test_5xx_and_429_are_retried_with_backoff_honoring_retry_after():
    transport, calls = _scripted(httpx.Response(503), httpx.Response(429, headers={"Retry-After": "7"}),
                                 httpx.Response(200, json={"items": [], "next_cursor": None}))
    sleeps: list[float] = []
    with RegistryClient("http://registry.test", transport=transport, sleep=sleeps.append) as c:
        assert c.get_json("search", "/api/v1/deltas", {}) == {"items": [], "next_cursor": None}
    assert len(calls) == 3
    assert 0 < sleeps[0] <= c.max_delay and sleeps[1] == 7.0


def test_retries_give_up_and_client_errors_are_not_retried():
    transport, calls = _scripted(*[httpx.Response(502)] * 3)
    with RegistryClient("http://registry.test", transport=transport, retries=2, sleep=lambda s: None) as c:
        with pytest.raises(RegistryError, match="gave up after 3 attempts"):
            c.get_json("search", "/api/v1/deltas", {})
    envelope = {"errors": [{"code": "NAME_UNKNOWN", "message": "repository ns/x is not known", "detail": None}]}
    transport, calls = _scripted(httpx.Response(404, json=envelope))
    with RegistryClient("http://registry.test", transport=transport, sleep=lambda s: None) as c:
        with pytest.raises(RegistryError, match="NAME_UNKNOWN: repository ns/x is not known"):
            c.resolve("ns/x", "1.0")
    assert len(calls) == 1


def test_push_falls_back_to_a_head_per_blob_where_the_registry_lacks_blobs_present(tmp_path: Path):
    transport, calls = _scripted(httpx.Response(405), httpx.Response(200), httpx.Response(404), httpx.Response(201))
    source = tmp_path / "blob"
    source.write_bytes(b"blob bytes")
    with RegistryClient("http://registry.test", "t", transport=transport) as c:
        assert c.blobs_present("ns/x", ["sha256:" + "a" * 64]) is None
        assert not c.upload_blob("ns/x", "sha256:" + "a" * 64, 10, source)  # HEAD 200: the registry has it
        assert c.upload_blob("ns/x", "sha256:" + "b" * 64, 10, source)  # HEAD 404, then the upload
    assert [(r.method, r.url.path) for r in calls] == [
        ("POST", "/v2/ns/x/blobs/_present"), ("HEAD", f"/v2/ns/x/blobs/sha256:{'a' * 64}"),
        ("HEAD", f"/v2/ns/x/blobs/sha256:{'b' * 64}"), ("POST", "/v2/ns/x/blobs/uploads/")]


def test_the_token_never_follows_a_redirect_to_another_host():
    data = b"blob bytes served by object storage"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    seen: dict[str, httpx.Headers] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen[request.url.host] = request.headers
        if request.url.host == "registry.test":
            return httpx.Response(307, headers={"Location": "http://storage.test/bucket/blob?signature=abc"})
        return httpx.Response(200, content=data)

    with RegistryClient("http://registry.test", "secret-token", transport=httpx.MockTransport(handler)) as c:
        path = c.download_blob("ns/x", Descriptor(mediaType=CHUNK_MEDIA_TYPE, digest=digest, size=len(data)))
    assert path.read_bytes() == data
    assert seen["registry.test"]["authorization"] == "Bearer secret-token"
    assert "authorization" not in seen["storage.test"]


def test_a_server_that_ignores_range_makes_the_download_start_over():
    data = os.urandom(5000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    Cache().part_path(digest).write_bytes(b"stale bytes from an earlier attempt")
    transport, calls = _scripted(httpx.Response(200, content=data))
    with RegistryClient("http://registry.test", transport=transport) as c:
        path = c.download_blob("ns/x", Descriptor(mediaType=CHUNK_MEDIA_TYPE, digest=digest, size=len(data)))
    assert calls[0].headers["range"] == "bytes=35-" and path.read_bytes() == data


def test_the_environment_token_goes_only_to_the_configured_registry(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PARAMDELTA_REGISTRY", "http://registry.test:8000")
    monkeypatch.setenv("PARAMDELTA_TOKEN", "env-token")
    assert _endpoint(parse_reference("ns/x:1"), None, None) == ("http://registry.test:8000", "env-token")
    assert _endpoint(parse_reference("http://registry.test:8000/ns/x:1"), None, None)[1] == "env-token"
    assert _endpoint(parse_reference("registry.test:8000/ns/x:1"), None, None)[1] is None  # https: another origin
    assert _endpoint(parse_reference("evil.test:8000/ns/x:1"), None, None) == ("https://evil.test:8000", None)
    assert _endpoint(parse_reference("ns/x:1"), "127.0.0.1:9000", None) == ("http://127.0.0.1:9000", "env-token")
    assert _endpoint(parse_reference("ns/x:1"), None, "explicit")[1] == "explicit"


def test_push_uploads_again_once_when_gc_swept_a_blob_before_the_manifest(artifacts, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch):
    """A GC with no grace can sweep a blob between its upload and the manifest PUT (the registry then
    answers MANIFEST_BLOB_UNKNOWN): push uploads what is missing once more and publishes."""
    from deltaformat import client as client_mod

    real = RegistryClient.put_manifest
    calls = {"n": 0}

    def swept_first(self, name, tag, data):
        calls["n"] += 1
        if calls["n"] == 1:
            err = RegistryError("manifest: MANIFEST_BLOB_UNKNOWN: blob unknown to registry")
            err.status, err.code = 400, "MANIFEST_BLOB_UNKNOWN"
            raise err
        return real(self, name, tag, data)

    def refused(self, name, tag, data):
        err = RegistryError("manifest: MANIFEST_INVALID: no")
        err.status, err.code = 400, "MANIFEST_INVALID"
        raise err

    server = RegistryServer(tmp_path / "data").start()  # its own: the shared one's search results stay exact
    try:
        token = server.token("swept", "push")
        monkeypatch.setattr(RegistryClient, "put_manifest", swept_first)
        named = renamed(artifacts.delta, "swept/delta", "1.0", tmp_path / "named")
        result = client_mod.push(named, "swept/delta:1.0", registry=server.url, token=token, quiet=True)
        assert calls["n"] == 2 and result.digest.startswith("sha256:")
        assert httpx.get(f"{server.url}/v2/swept/delta/manifests/1.0").status_code == 200
        monkeypatch.setattr(RegistryClient, "put_manifest", refused)  # any other refusal is not retried
        with pytest.raises(RegistryError, match="MANIFEST_INVALID"):
            client_mod.push(renamed(named, "swept/delta", "2.0", tmp_path / "named"), "swept/delta:2.0", registry=server.url,
                            token=token, quiet=True)
    finally:
        server.stop()


def _session_registry(min_chunk: int | None, refuse_whole: bool) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    """A registry that opens sessions (202), optionally asks for OCI-Chunk-Min-Length and refuses whole PUTs (413)."""
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if request.method == "POST":
            headers = {"Location": "/v2/ns/x/blobs/uploads/s1"}
            if min_chunk:
                headers["OCI-Chunk-Min-Length"] = str(min_chunk)
            return httpx.Response(202, headers=headers)
        if request.method == "PATCH":
            return httpx.Response(202, headers={"Location": "/v2/ns/x/blobs/uploads/s1"})
        if request.method == "PUT":
            whole = bool(request.content)
            return httpx.Response(413 if whole and refuse_whole else 201)
        return httpx.Response(404)

    return httpx.MockTransport(handler), calls


def test_chunks_honour_the_registrys_minimum_length(tmp_path: Path):
    data = bytes(range(256)) * 40  # 10240 bytes
    source = tmp_path / "blob"
    source.write_bytes(data)
    transport, calls = _session_registry(min_chunk=4096, refuse_whole=False)
    with RegistryClient("http://registry.test", transport=transport, chunk_bytes=1000, cache=Cache(tmp_path / "c")) as c:
        assert c.upload_blob("ns/x", "sha256:" + hashlib.sha256(data).hexdigest(), len(data), source, present=False)
    patches = [r for r in calls if r.method == "PATCH"]
    assert [len(r.content) for r in patches] == [4096, 4096, 2048]  # not 1000-byte chunks: the registry asked for 4096
    assert b"".join(r.content for r in patches) == data


def test_a_blob_refused_whole_goes_in_chunks(tmp_path: Path):
    data = b"x" * 3000
    source = tmp_path / "blob"
    source.write_bytes(data)
    transport, calls = _session_registry(min_chunk=None, refuse_whole=True)
    with RegistryClient("http://registry.test", transport=transport, chunk_bytes=1 << 20, cache=Cache(tmp_path / "c")) as c:
        assert c.upload_blob("ns/x", "sha256:" + hashlib.sha256(data).hexdigest(), len(data), source, present=False)
    assert [r.method for r in calls][-3:] == ["POST", "PATCH", "PUT"]  # after the 413: a session, the bytes, the digest
    assert [r for r in calls if r.method == "PATCH"][0].content == data


def _bearer_registry(realm: str, seen: list[httpx.Request]) -> httpx.MockTransport:
    """https://registry.test asking for a Bearer token from ``realm``; it accepts the token 'granted'."""
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "registry.test":
            if request.headers.get("authorization") == "Bearer granted":
                return httpx.Response(200, json={"tags": []})
            return httpx.Response(401, headers={"WWW-Authenticate": f'Bearer realm="{realm}",service="reg",scope="repository:ns/x:pull"'})
        return httpx.Response(200, json={"token": "granted"})

    return httpx.MockTransport(handler)


@pytest.mark.parametrize("realm, credentials_sent", [("https://auth.test/token", True), ("http://auth.test/token", False)])
def test_basic_credentials_go_to_a_token_realm_only_over_https(realm: str, credentials_sent: bool):
    seen: list[httpx.Request] = []
    with RegistryClient("https://registry.test", transport=_bearer_registry(realm, seen), basic=("u", "p")) as c:
        assert c.get_json("tags", "/v2/ns/x/tags/list", {}) == {"tags": []}
        assert c.get_json("tags", "/v2/ns/x/tags/list", {}) == {"tags": []}  # the token is kept: no second trip
    token_requests = [r for r in seen if r.url.host == "auth.test"]
    assert len(token_requests) == 1
    assert dict(token_requests[0].url.params.multi_items()) == {"service": "reg", "scope": "repository:ns/x:pull"}
    assert ("authorization" in token_requests[0].headers) == credentials_sent  # never in the clear from an https registry


def test_the_user_token_goes_to_a_token_realm_on_the_registrys_origin_only():
    seen: list[httpx.Request] = []
    with RegistryClient("https://registry.test", "user-token", transport=_bearer_registry("https://auth.test/token", seen)) as c:
        c.get_json("tags", "/v2/ns/x/tags/list", {})
    assert "authorization" not in [r for r in seen if r.url.host == "auth.test"][0].headers
