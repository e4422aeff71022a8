"""Issue #10 against a real registry process on loopback: a hostile pusher or a hostile request does no harm.

References outside their grammar, manifests that claim another identity, cursors and bodies built to
crash the server, copy-paste commands a shell would split, versions with 10^4..10^5 tensors, anonymous
reads of /docs and /metrics, token namespaces that can never match, control characters in logs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from deltaformat import client
from deltaformat.artifact import BLOB_DIR, DIGEST_FILE, MANIFEST_FILE, open_artifact
from deltaformat.digests import blob_digest
from deltaformat.oci import build_oci_manifest
from paramdelta_dev.artifacts import Artifacts
from paramdelta_dev.renamed import renamed
from paramdelta_dev.serve import RegistryServer

pytestmark = pytest.mark.usefixtures("client_env")
OCI = "application/vnd.oci.image.manifest.v1+json"


def _error(r: httpx.Response) -> dict:
    return r.json()["errors"][0]


def _answer(r: httpx.Response) -> tuple[int, str | None]:
    """(status, OCI error code); the code is None when the body is not an error envelope (e.g. a 201)."""
    try:
        return r.status_code, _error(r)["code"]
    except (ValueError, KeyError, IndexError, TypeError):
        return r.status_code, None


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _upload_blobs(srv: RegistryServer, name: str, artifact: Path, token: str) -> bytes:
    """Upload an artifact's blobs to ``name`` (no manifest) and return the OCI manifest a push would PUT."""
    art = open_artifact(artifact)
    with client.RegistryClient(srv.url, token) as c:
        c.upload_blob(name, art.digest, len(art.manifest_bytes), artifact / MANIFEST_FILE)
        for digest, size in art.manifest.blob_sizes().items():
            c.upload_blob(name, digest, size, art.blob_dir / digest.removeprefix("sha256:"))
    return build_oci_manifest(art.manifest, art.manifest_bytes)


def _cursor(values: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


def test_references_outside_their_grammar_are_refused_on_every_route(registry_server: RegistryServer, artifacts: Artifacts,
                                                                     tmp_path: Path):
    srv, token = registry_server, registry_server.token("gram", "push")
    # artifacts.other: the shared server's search for "tiny chat" (test_registry_e2e) must not find it.
    oci = _upload_blobs(srv, "gram/x", renamed(artifacts.other, "gram/x", None, tmp_path), token)
    put = lambda ref: httpx.put(f"{srv.url}/v2/gram/x/manifests/{ref}", content=oci,  # noqa: E731
                                headers={**_bearer(token), "Content-Type": OCI})

    # A tag a page would paste into a shell, one that forges a log line, one longer than the column.
    for hostile in ("2;touch${IFS}X;%23", "1%0AINFO pushed meta-llama:1", "v" * 129, "-rf", ".hidden"):
        r = put(hostile)
        assert _answer(r) == (400, "TAG_INVALID"), hostile
        for path in (f"/api/v1/deltas/gram/x/versions/{hostile}", f"/api/v1/deltas/gram/x/versions/{hostile}/manifest"):
            assert _answer(httpx.get(srv.url + path)) == (400, "TAG_INVALID"), path
        # OCI (and its conformance suite) answers a read of a tag that cannot exist as of one that does not.
        assert _answer(httpx.get(f"{srv.url}/v2/gram/x/manifests/{hostile}")) == (404, "MANIFEST_UNKNOWN"), hostile
        assert _answer(httpx.delete(f"{srv.url}/v2/gram/x/manifests/{hostile}", headers=_bearer(token))) == (400, "TAG_INVALID")
    assert httpx.get(f"{srv.url}/v2/gram/x/tags/list").json()["tags"] == []  # nothing was tagged

    for name in ("Gram/x", "gram/x%20y", "gram/" + "x" * 300, "gram"):
        r = httpx.get(f"{srv.url}/v2/{name}/manifests/1.0")
        assert _answer(r) == (400, "NAME_INVALID"), name
    assert _answer(httpx.get(f"{srv.url}/v2/gram/x/tags/list", params={"last": "v" * 200})) == (400, "INVALID_REQUEST")
    assert put("1.0").status_code == 201  # the grammar's own tags still go in


def test_copy_paste_commands_stay_one_argument_each_whatever_the_host_header(registry_server: RegistryServer,
                                                                            artifacts: Artifacts):
    srv = registry_server
    client.push(artifacts.delta, f"{srv.host}/acme/tiny-chat:1.0", token=srv.token("acme", "push"))
    host = "reg;touch$(id)&&'x'"  # what a Host header may hold (RFC 3986 sub-delims); it names the registry in the commands
    v = httpx.get(f"{srv.url}/api/v1/deltas/acme/tiny-chat/versions/1.0", headers={"Host": host}).json()
    ref = f"http://{host}/acme/tiny-chat:1.0"  # not loopback, so the scheme is spelled out
    assert shlex.split(v["commands"]["pull"]) == ["paramdelta", "pull", ref, "--out", "tiny-chat-1.0.delta"]
    assert shlex.split(v["commands"]["apply"]) == ["paramdelta", "apply", ref, "--base", "NEW_BASE", "--out", "tiny-chat-1.0-model"]


def test_a_manifest_is_published_only_under_the_name_and_version_it_states(registry_server: RegistryServer,
                                                                           artifacts: Artifacts):
    srv = registry_server
    evil = srv.token("evil", "push")
    oci = _upload_blobs(srv, "evil/x", artifacts.delta, evil)  # manifest.json says acme/tiny-chat, version 1.0
    digest = "sha256:" + hashlib.sha256(oci).hexdigest()
    put = lambda repo, ref, token: httpx.put(f"{srv.url}/v2/{repo}/manifests/{ref}", content=oci,  # noqa: E731
                                             headers={**_bearer(token), "Content-Type": OCI})

    for ref in ("7", "1.0", digest):  # by tag or by digest, another repository is refused
        r = put("evil/x", ref, evil)
        assert _answer(r) == (400, "MANIFEST_INVALID"), ref
        assert "acme/tiny-chat" in _error(r)["message"] and "evil/x" in _error(r)["message"]
    assert httpx.get(f"{srv.url}/api/v1/deltas/evil/x").json()["versions"] == []

    acme = srv.token("acme", "push")
    _upload_blobs(srv, "acme/tiny-chat", artifacts.delta, acme)
    wrong_version = put("acme/tiny-chat", "7", acme)
    assert _answer(wrong_version) == (400, "MANIFEST_INVALID") and "1.0" in _error(wrong_version)["message"]
    assert put("acme/tiny-chat", digest, acme).status_code == 201  # its own name, by digest
    assert put("acme/tiny-chat", "1.0", acme).status_code == 201  # its own name and version


def test_hostile_cursors_bodies_and_lengths_get_a_400_not_a_500(registry_server: RegistryServer):
    srv = registry_server
    api = f"{srv.url}/api/v1"
    cases = [
        (f"{api}/deltas", {"cursor": _cursor([{}])}),
        (f"{api}/deltas", {"cursor": _cursor([[1] * 3])}),
        (f"{api}/deltas", {"sort": "size", "cursor": _cursor([{}, 1])}),
        (f"{api}/deltas", {"sort": "name", "cursor": _cursor(["x" * 5000])}),
        (f"{api}/deltas", {"sort": "parameters", "cursor": _cursor([1 << 70, 1])}),
        (f"{api}/deltas", {"cursor": "W" * 5000}),
        (f"{api}/deltas", {"cursor": base64.urlsafe_b64encode(b"[" * 5000 + b"]" * 5000).decode()}),
        (f"{api}/compatible", {"base_id": "x", "cursor": _cursor([None])}),
        (f"{api}/deltas", {"q": "x" * 300}),
        (f"{api}/deltas", {"namespace": "n" * 300}),
        (f"{api}/compatible", {"base_id": "b" * 300}),
    ]
    for url, params in cases:
        r = httpx.get(url, params=params)
        assert _answer(r) == (400, "INVALID_REQUEST"), (url, str(params)[:80])

    deep = b'{"digests": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    r = httpx.post(f"{srv.url}/v2/acme/tiny-chat/blobs/_present", content=deep)
    assert _answer(r) == (400, "INVALID_REQUEST")


def test_overlong_manifest_fields_are_refused_naming_the_field(registry_server: RegistryServer, artifacts: Artifacts,
                                                               tmp_path: Path):
    srv, token = registry_server, registry_server.token("long", "push")
    art = open_artifact(artifacts.delta)
    manifest = art.manifest.model_copy(update={"name": "long/base-id", "version": "1.0"})
    manifest.base = manifest.base.model_copy(update={"id": "org/" + "m" * 300})
    folder = _write_artifact(tmp_path / "long", manifest.model_dump_json().encode(), artifacts.delta)
    with pytest.raises(client.RegistryError, match=r"base\.id has 304 characters") as exc:
        client.push(folder, f"{srv.host}/long/base-id:1.0", token=token)
    assert exc.value.status == 400


def _write_artifact(folder: Path, manifest_json: bytes, blobs_from: Path) -> Path:
    """An artifact folder with this manifest.json, its blobs hard-linked from another artifact."""
    (folder / BLOB_DIR).mkdir(parents=True)
    for blob in (blobs_from / BLOB_DIR).iterdir():
        os.link(blob, folder / BLOB_DIR / blob.name)
    (folder / MANIFEST_FILE).write_bytes(manifest_json)
    (folder / DIGEST_FILE).write_text(blob_digest(manifest_json) + "\n")
    return folder


def _many_tensors(artifact: Path, name: str, extra: int) -> bytes:
    """The artifact's manifest.json with ``extra`` more (unchanged) tensors: a legal MoE-sized version whose blobs
    are the artifact's own. Written compactly so that 5*10^4 tensors fit the 16 MiB manifest cap."""
    raw = json.loads((artifact / MANIFEST_FILE).read_bytes())
    side = {"shape": [4], "dtype": "F32", "digest": "sha256:" + "c" * 64}
    raw["tensors"] += [{"name": f"m.{i}", "kind": "unchanged", "base": side, "post": side} for i in range(extra)]
    raw.update(name=name, version="1.0")
    return json.dumps(raw, separators=(",", ":")).encode()


def test_a_version_with_many_tensors_is_served_from_its_stored_summary(artifacts: Artifacts, tmp_path: Path):
    """Reads cost the same for 5*10^4 tensors as for 10: the API and the page never read manifest.json again
    (proved by removing it from the store and restarting, which empties every cache) and list tensors a page
    at a time."""
    srv = RegistryServer(tmp_path / "data").start()
    try:
        art = open_artifact(artifacts.delta)
        small = len(art.manifest.tensors)
        folder = _write_artifact(tmp_path / "moe", _many_tensors(artifacts.delta, "moe/big", 50_000), artifacts.delta)
        pushed = client.push(folder, f"{srv.host}/moe/big:1.0", token=srv.token("moe", "push"))
        config = open_artifact(folder).digest
        srv.stop()
        srv.blob_file(config).unlink()  # a read that needs manifest.json now fails
        srv.start()

        v = httpx.get(f"{srv.url}/api/v1/deltas/moe/big/versions/1.0")
        assert v.status_code == 200, v.text
        v = v.json()
        assert (v["tensors"], v["digest"]) == (small + 50_000, pushed.digest) and v["kinds"]["unchanged"] >= 50_000
        assert len(v["tensor_list"]) == 100 and v["tensor_list"][small]["name"] == "m.0"
        listed, cursor, pages = len(v["tensor_list"]), v["tensor_list_next_cursor"], 0
        while cursor and pages < 3:
            page = httpx.get(f"{srv.url}/api/v1/deltas/moe/big/versions/1.0/tensors", params={"cursor": cursor}).json()
            assert page["items"][0]["name"] == f"m.{listed - small}"
            listed, cursor, pages = listed + len(page["items"]), page["next_cursor"], pages + 1
        html = httpx.get(f"{srv.url}/deltas/moe/big", headers={"Accept": "text/html"})
        assert html.status_code == 200 and html.text.count("<tr><td><code>") == 50 and 'id="next-tensors"' in html.text
        assert httpx.get(f"{srv.url}/api/v1/deltas/moe/big/versions/1.0/manifest").status_code == 404  # it is gone
    finally:
        srv.stop()


def test_pages_and_endpoints_send_security_headers_and_docs_need_a_token_when_pulls_do(tmp_path: Path):
    srv = RegistryServer(tmp_path / "data", args=("--no-anonymous-pull",)).start()
    try:
        for path in ("/docs", "/openapi.json", "/metrics", "/"):
            r = httpx.get(srv.url + path)
            assert _answer(r) == (401, "UNAUTHORIZED"), path
        token = _bearer(srv.token("acme", "pull"))
        for path in ("/docs", "/openapi.json", "/metrics", "/", "/static/style.css"):
            assert httpx.get(srv.url + path, headers=token).status_code == 200, path

        page = httpx.get(srv.url + "/", headers=token)
        csp = page.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert (page.headers["x-content-type-options"], page.headers["referrer-policy"]) == ("nosniff", "no-referrer")
        assert not re.search(r"<script(?![^>]*\bsrc=)", page.text) and "<style" not in page.text  # nothing inline to allow
        blob = httpx.get(srv.url + "/v2/acme/x/blobs/sha256:" + "0" * 64, headers=token)
        assert blob.headers["x-content-type-options"] == "nosniff"  # API answers too

        docs = httpx.get(srv.url + "/docs", headers=token)
        inline = re.findall(r"<script>(.*?)</script>", docs.text, re.S)
        allowed = re.findall(r"'sha256-([^']+)'", docs.headers["content-security-policy"])
        assert inline and [base64.b64encode(hashlib.sha256(code.encode()).digest()).decode() for code in inline] == allowed
    finally:
        srv.stop()


def test_token_create_refuses_namespaces_that_can_never_match(tmp_path: Path):
    def create(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "deltaformat.cli", "token", "create", *args, "--data", str(tmp_path)],
                              capture_output=True, text=True, timeout=120)

    for namespace in ("Meta", "a/b", "x-", "n" * 300):
        done = create(namespace, "--scope", "push")
        assert done.returncode != 0 and done.stdout == "", namespace
        assert len(done.stderr.strip().splitlines()) == 1 and "can never match" in done.stderr, done.stderr[-500:]
    assert create("meta", "--scope", "push").stdout.startswith("pdt_")


def test_log_messages_cannot_forge_lines(tmp_path: Path):
    """A request path or a pushed name in a log message is written with its control characters escaped."""
    code = ("import logging; from registry.metrics import configure_logging; from registry.settings import Settings; "
            "configure_logging(Settings()); logging.getLogger('paramdelta.registry').warning("
            "'GET %s failed', '/v2/a/b\\n2026-01-01 INFO forged line\\x1b[2J')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PARAMDELTA_DATA": str(tmp_path)})
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "\\n2026-01-01 INFO forged line\\x1b[2J" in lines[0], done.stderr


def test_the_manifest_cache_is_bounded_by_bytes(tmp_path: Path, artifacts: Artifacts):
    """The API's /manifest reads keep manifest.json bytes in memory up to PARAMDELTA_MANIFEST_CACHE_BYTES, whatever
    their number (the old cache held 64 entries of up to 16 MiB each)."""
    from test_registry_api import InProcess

    one = len(open_artifact(artifacts.delta).manifest_bytes) + 300  # renamed copies differ by a few bytes
    reg = InProcess(tmp_path / "registry", manifest_cache_bytes=2 * one)
    with reg.http:
        auth = reg.token("acme", "push")
        for i in range(5):
            reg.publish(f"acme/c{i}", "1.0", artifacts.delta, auth)
            got = reg.http.get(f"/api/v1/deltas/acme/c{i}/versions/1.0/manifest")
            assert got.status_code == 200 and got.headers["docker-content-digest"] == blob_digest(got.content)
            cache = reg.reg.manifests.config_cache
            assert 0 < cache.bytes <= 2 * one
        assert len(cache._items) == 2  # the newest two


def test_a_postgresql_url_without_a_driver_installed_is_one_line_not_a_traceback(tmp_path: Path):
    code = ("import sys; sys.modules['psycopg2'] = sys.modules['psycopg'] = None  # as if neither were installed\n"
            "from deltaformat.cli import main; sys.exit(main(['token', 'list']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PARAMDELTA_DATABASE_URL": "postgresql://user@127.0.0.1:1/db"})
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and "no driver is installed" in done.stderr


def test_a_version_published_before_summaries_were_stored_is_summarised_once_on_first_read(tmp_path: Path,
                                                                                          artifacts: Artifacts):
    """Migration 0002 adds the summary column empty: the first read of an older version computes it and stores it."""
    from sqlalchemy import delete, select, update
    from test_registry_api import InProcess

    from registry.db.models import Manifest, ManifestTensor

    reg = InProcess(tmp_path / "registry")
    with reg.http:
        digest = reg.publish("acme/tiny-chat", "1.0", artifacts.delta, reg.token("acme", "push"))
        fresh = reg.http.get("/api/v1/deltas/acme/tiny-chat/versions/1.0").json()
        with reg.reg.db.session() as s:  # as a manifest pushed before 0002 looks
            s.execute(update(Manifest).where(Manifest.digest == digest).values(summary=None))
            s.execute(delete(ManifestTensor))
        assert reg.http.get("/api/v1/deltas/acme/tiny-chat/versions/1.0").json() == fresh
        with reg.reg.db.session() as s:
            assert s.scalar(select(Manifest.summary).where(Manifest.digest == digest)) is not None
            assert len(s.scalars(select(ManifestTensor.position)).all()) == fresh["tensors"]
