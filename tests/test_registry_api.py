"""The registry in-process (FastAPI's TestClient): manifest validation, the native API,
upload sessions, anonymous pull switched off, error envelopes, migrations."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from deltaformat.artifact import blob_path, open_artifact
from deltaformat.client import RegistryClient
from deltaformat.manifest import Manifest
from deltaformat.oci import build_oci_manifest, sha256_digest
from paramdelta_dev.artifacts import Artifacts
from paramdelta_dev.renamed import renamed
from registry.app import create_app
from registry.auth import create_token
from registry.db.models import Manifest as ManifestRow
from registry.db.models import UploadSession, utcnow
from registry.publish import index_fields, summarize
from registry.settings import Settings

pytestmark = pytest.mark.usefixtures("client_env")
OCI = "application/vnd.oci.image.manifest.v1+json"


class _ViaTestClient(httpx.BaseTransport):
    """Lets the real client (httpx) talk to the app through Starlette's TestClient (httpx2)."""

    def __init__(self, test_client: TestClient):
        self.test_client = test_client

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        r = self.test_client.request(request.method, str(request.url), content=request.read(), follow_redirects=False,
                                     headers=[(k.decode(), v.decode()) for k, v in request.headers.raw])
        return httpx.Response(r.status_code, headers=list(r.headers.multi_items()), content=r.content)


class InProcess:
    """An app, a TestClient on it, and a RegistryClient (the real client code) over the same transport."""

    def __init__(self, data: Path, **settings: object):
        self.app = create_app(Settings(data=data, **settings))
        self.renamed = data.parent / f"{data.name}-artifacts"  # artifacts named for the repositories they go to
        self.http = TestClient(self.app)
        self.reg = self.app.state.registry

    def token(self, namespace: str, scope: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {create_token(self.reg.db, namespace, scope)}"}

    def client(self, token: dict[str, str] | None = None) -> RegistryClient:
        bearer = token["Authorization"].split()[1] if token else None
        return RegistryClient("http://testserver", bearer, transport=_ViaTestClient(self.http), workers=1)

    def upload_blobs(self, name: str, artifact: Path, token: dict[str, str]) -> None:
        art = open_artifact(artifact)
        with self.client(token) as c:
            c.upload_blob(name, sha256_digest(art.manifest_bytes), len(art.manifest_bytes), artifact / "manifest.json")
            for digest, size in art.manifest.blob_sizes().items():
                c.upload_blob(name, digest, size, blob_path(art.blob_dir, digest))

    def publish(self, name: str, version: str, artifact: Path, token: dict[str, str]) -> str:
        artifact = renamed(artifact, name, version, self.renamed)
        self.upload_blobs(name, artifact, token)
        art = open_artifact(artifact)
        with self.client(token) as c:
            return c.put_manifest(name, version, build_oci_manifest(art.manifest, art.manifest_bytes))


@pytest.fixture
def reg(tmp_path: Path):
    r = InProcess(tmp_path / "registry")
    with r.http:
        yield r


def _error(response) -> dict:
    return response.json()["errors"][0]


def test_manifest_put_is_validated_and_errors_name_the_culprit(reg: InProcess, artifacts: Artifacts):
    auth = reg.token("acme", "push")
    named = renamed(artifacts.delta, "acme/v", "1.0", reg.renamed)
    art = open_artifact(named)
    reg.upload_blobs("acme/v", named, auth)
    good = json.loads(build_oci_manifest(art.manifest, art.manifest_bytes))

    def put(doc: dict, ref: str = "1.0", **kw):
        return reg.http.put(f"/v2/acme/v/manifests/{ref}", content=json.dumps(doc), headers={**auth, "Content-Type": OCI}, **kw)

    dropped = {**good, "layers": good["layers"][1:]}
    r = put(dropped)
    assert r.status_code == 400 and _error(r)["code"] == "MANIFEST_INVALID"
    assert good["layers"][0]["digest"] in _error(r)["message"]

    unknown = "sha256:" + "ab" * 32
    stranger = {**good, "layers": [*good["layers"], {"mediaType": "x", "digest": unknown, "size": 3}]}
    r = put(stranger)
    assert _error(r)["code"] == "MANIFEST_BLOB_UNKNOWN" and unknown in _error(r)["message"]

    resized = {**good, "layers": [{**good["layers"][0], "size": good["layers"][0]["size"] + 1}, *good["layers"][1:]]}
    assert "the manifest says" in _error(put(resized))["message"]

    not_ours = {**good, "config": {**good["config"], "mediaType": "application/vnd.oci.image.config.v1+json"}}
    assert "config.mediaType" in _error(put(not_ours))["message"]
    assert _error(put({"schemaVersion": 2}))["message"].startswith("OCI manifest field config")
    assert _error(put(good, "latest"))["code"] == "UNSUPPORTED"
    assert _error(put(good, "sha256:" + "0" * 64))["code"] == "DIGEST_INVALID"
    big = reg.http.put("/v2/acme/v/manifests/2.0", content=b" " * (reg.reg.settings.max_manifest_bytes + 1), headers=auth)
    assert big.status_code == 413

    assert put(good).status_code == 201  # and the intact one is accepted
    stored = reg.http.get("/v2/acme/v/manifests/1.0")
    assert stored.content == json.dumps(good).encode() and stored.headers["content-type"] == OCI  # byte-exact


def test_a_push_summarises_its_manifest_once_and_stores_what_a_fresh_summary_gives(
        reg: InProcess, artifacts: Artifacts, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    """The version's summary, its search columns and the log line come from one Manifest.summary() per push,
    and are what they were when each computed its own (compared here with fresh calls, byte for byte)."""
    calls = []
    summary = Manifest.summary
    monkeypatch.setattr(Manifest, "summary", lambda self: calls.append(1) or summary(self))
    with caplog.at_level(logging.INFO, logger="paramdelta.registry"):
        reg.publish("acme/once", "1.0", artifacts.delta, reg.token("acme", "push"))
    assert len(calls) == 1
    monkeypatch.undo()
    art = open_artifact(renamed(artifacts.delta, "acme/once", "1.0", reg.renamed))  # the folder reg.publish pushed
    with reg.reg.db.session() as s:
        row = s.scalar(select(ManifestRow).where(ManifestRow.config_digest == art.digest))
        assert row.summary == summarize(art.manifest)[0]
        assert {k: getattr(row, k) for k in index_fields(art.manifest)} == index_fields(art.manifest)
    assert f"({len(art.manifest.blob_digests()) + 1} blobs, {art.manifest.stored_bytes()} bytes)" in caplog.text


def test_native_api_describes_versions_and_serves_manifest_json_alone(reg: InProcess, artifacts: Artifacts):
    auth = reg.token("acme", "push")
    digest = reg.publish("acme/tiny-chat", "1.0", artifacts.delta, auth)
    art = open_artifact(artifacts.delta)

    delta = reg.http.get("/api/v1/deltas/acme/tiny-chat").json()
    assert delta["latest"] == "1.0" and delta["tags"] == {"1.0": digest, "latest": digest}
    assert delta["versions"][0]["pushed_by"] == "push:acme"

    v = reg.http.get("/api/v1/deltas/acme/tiny-chat/versions/latest").json()
    assert v["version"] == "1.0" and v["digest"] == digest and v["config_digest"] == art.digest
    assert v["base"] == art.manifest.base.model_dump(mode="json")
    assert v["stored_bytes"] == art.manifest.stored_bytes() and len(v["tensor_list"]) == len(art.manifest.tensors)
    assert v["commands"]["apply"] == "paramdelta apply http://testserver/acme/tiny-chat:1.0 --base NEW_BASE --out tiny-chat-1.0-model"

    for ref in ("1.0", digest):
        raw = reg.http.get(f"/api/v1/deltas/acme/tiny-chat/versions/{ref}/manifest")
        assert raw.content == art.manifest_bytes and raw.headers["docker-content-digest"] == art.digest

    base = art.manifest.base
    for query, match in (({"fingerprint": base.fingerprint}, "fingerprint"), ({"base_id": "BASE"}, "id"),
                         ({"shapes": v["base_shapes_key"]}, "shapes"), ({"shapes": v["base_shapes_key"], "base_id": "base"}, "id")):
        items = reg.http.get("/api/v1/compatible", params=query).json()["items"]
        assert [(i["name"], i["match"]) for i in items] == [("acme/tiny-chat", match)], query
    assert reg.http.get("/api/v1/compatible", params={"fingerprint": "sha256:" + "1" * 64}).json()["items"] == []
    assert reg.http.get("/api/v1/deltas", params={"architecture": "llama"}).json()["items"][0]["name"] == "acme/tiny-chat"
    assert reg.http.get("/api/v1/deltas", params={"architecture": "gpt2"}).json()["items"] == []
    assert reg.http.get("/api/v1/deltas", params={"q": "50%_off"}).json()["items"] == []  # LIKE wildcards are literal


def test_upload_sessions_report_offsets_refuse_gaps_and_expire(reg: InProcess):
    auth = reg.token("acme", "push")
    start = reg.http.post("/v2/acme/up/blobs/uploads/", headers=auth)
    assert start.status_code == 202 and start.headers["upload-offset"] == "0"
    loc = start.headers["location"]
    assert reg.http.patch(loc, content=b"x" * 10, headers={**auth, "Content-Range": "0-9"}).headers["range"] == "0-9"
    gap = reg.http.patch(loc, content=b"y" * 5, headers={**auth, "Content-Range": "20-24"})
    assert gap.status_code == 416 and gap.headers["upload-offset"] == "10"
    status = reg.http.get(loc, headers=auth)
    assert status.status_code == 204 and status.headers["upload-offset"] == "10"
    assert reg.http.delete(loc, headers=auth).status_code == 204
    assert _error(reg.http.get(loc, headers=auth))["code"] == "BLOB_UPLOAD_UNKNOWN"

    stale = reg.http.post("/v2/acme/up/blobs/uploads/", headers=auth).headers["docker-upload-uuid"]
    with reg.reg.db.session() as s:
        s.get(UploadSession, stale).expires_at = utcnow() - timedelta(seconds=1)
    assert reg.reg.uploads.purge_expired() == 1
    assert not (reg.reg.settings.data / "blobs" / "uploads" / stale).exists()
    assert _error(reg.http.get(f"/v2/acme/up/blobs/uploads/{stale}", headers=auth))["code"] == "BLOB_UPLOAD_UNKNOWN"


def test_blobs_mount_across_repositories_and_stay_per_repository(reg: InProcess):
    auth = reg.token("acme", "push")
    data = b"shared tokenizer"
    digest = sha256_digest(data)
    reg.http.post("/v2/acme/a/blobs/uploads/", params={"digest": digest}, content=data, headers=auth)
    assert reg.http.head(f"/v2/acme/b/blobs/{digest}").status_code == 404  # linked to acme/a only
    mounted = reg.http.post("/v2/acme/b/blobs/uploads/", params={"mount": digest, "from": "acme/a"}, headers=auth)
    assert mounted.status_code == 201 and reg.http.get(f"/v2/acme/b/blobs/{digest}").content == data


def test_a_monolithic_upload_records_no_session_and_leaves_nothing_when_refused(reg: InProcess):
    auth = reg.token("acme", "push")
    data = b"a whole blob in one request"
    digest = sha256_digest(data)
    uploads = reg.reg.settings.data / "blobs" / "uploads"
    wrong = reg.http.post("/v2/acme/mono/blobs/uploads/", params={"digest": sha256_digest(b"other")}, content=data, headers=auth)
    assert wrong.status_code == 400 and _error(wrong)["code"] == "DIGEST_INVALID"
    assert reg.http.post("/v2/acme/mono/blobs/uploads/", params={"digest": digest}, content=data).status_code == 401
    assert list(uploads.iterdir()) == [] and reg.http.head(f"/v2/acme/mono/blobs/{digest}").status_code == 404
    assert reg.http.post("/v2/acme/mono/blobs/uploads/", params={"digest": digest}, content=data, headers=auth).status_code == 201
    assert reg.http.get(f"/v2/acme/mono/blobs/{digest}").content == data
    with reg.reg.db.session() as s:
        assert s.query(UploadSession).count() == 0
    assert list(uploads.iterdir()) == []


def test_blobs_present_answers_what_a_head_of_each_would(reg: InProcess):
    auth = reg.token("acme", "push")
    data, absent = b"a layer", sha256_digest(b"never uploaded")
    digest = sha256_digest(data)
    reg.http.post("/v2/acme/a/blobs/uploads/", params={"digest": digest}, content=data, headers=auth)

    def present(name: str, body: object):
        return reg.http.post(f"/v2/{name}/blobs/_present", json=body)

    assert present("acme/a", {"digests": [digest, absent]}).json() == {"blobs": {digest: len(data)}}
    assert present("acme/b", {"digests": [digest]}).json() == {"blobs": {}}  # linked to acme/a only
    assert present("acme/a", {"digests": []}).json() == {"blobs": {}}
    assert _error(present("acme/a", {"digests": ["sha256:zz"]}))["code"] == "DIGEST_INVALID"
    assert _error(present("acme/a", [digest]))["code"] == "INVALID_REQUEST"
    assert _error(present("acme/a", {"digests": [digest] * 1001}))["code"] == "INVALID_REQUEST"
    with reg.client(auth) as c:
        assert c.blobs_present("acme/a", [digest, absent]) == {digest}


def test_anonymous_pull_can_be_switched_off(tmp_path: Path, artifacts: Artifacts):
    reg = InProcess(tmp_path / "private", anonymous_pull=False)
    with reg.http:
        reg.publish("acme/private", "1.0", artifacts.delta, reg.token("acme", "push"))
        reg.publish("other/private", "1.0", artifacts.delta, reg.token("other", "push"))
        for path in ("/v2/", "/v2/acme/private/manifests/1.0", "/api/v1/deltas", "/api/v1/deltas/acme/private"):
            r = reg.http.get(path)
            assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer realm="), path
        pull = reg.token("acme", "pull")
        assert reg.http.get("/v2/acme/private/manifests/1.0", headers=pull).status_code == 200
        assert reg.http.get("/v2/other/private/manifests/1.0", headers=pull).status_code == 403
        listed = reg.http.get("/api/v1/deltas", headers=pull).json()["items"]
        assert [d["name"] for d in listed] == ["acme/private"]  # lists only what the token may pull
        admin = reg.http.get("/api/v1/deltas", headers=reg.token("", "admin")).json()["items"]
        assert sorted(d["name"] for d in admin) == ["acme/private", "other/private"]


def test_errors_use_the_oci_envelope_and_pages_get_html(reg: InProcess):
    assert _error(reg.http.get("/v2/acme/nothing/manifests/1.0"))["code"] == "NAME_UNKNOWN"
    assert _error(reg.http.get("/v2/Bad_Name/manifests/1.0"))["code"] == "NAME_INVALID"
    assert _error(reg.http.get("/v2/acme/x/blobs/sha256:zz"))["code"] == "DIGEST_INVALID"
    assert _error(reg.http.get("/api/v1/deltas", params={"cursor": "!!"}))["code"] == "INVALID_REQUEST"
    assert _error(reg.http.get("/api/v1/deltas", params={"limit": 0}))["code"] == "INVALID_REQUEST"
    page = reg.http.get("/deltas/acme/nothing", headers={"Accept": "text/html"})
    assert page.status_code == 404 and "acme/nothing is not known" in page.text and "<html" in page.text
    assert reg.http.get("/healthz").json()["status"] == "ok"
    assert "/v2/{name}/blobs/uploads/" in reg.http.get("/openapi.json").json()["paths"]


def test_migrations_create_exactly_the_models_schema(reg: InProcess):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from registry.db import Base

    with reg.reg.db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []
