"""The registry as a plain OCI 1.1 registry, next to deltas: images, indexes and artifacts stored as pushed, sha512,
referrers, deletes under their scopes, _catalog, and the Bearer challenge docker-style clients need to send
credentials. Against a real `paramdelta serve` on loopback; skopeo where a third-party client is the point."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import httpx
import pytest

from paramdelta_dev.artifacts import Artifacts
from paramdelta_dev.renamed import push
from paramdelta_dev.serve import RegistryServer

pytestmark = pytest.mark.usefixtures("client_env")

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
IMAGE_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
EMPTY_JSON = "application/vnd.oci.empty.v1+json"


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def put_blob(srv: RegistryServer, name: str, data: bytes, token: str, algorithm: str = "sha256") -> dict:
    """A monolithic upload; returns the blob's descriptor fields."""
    digest = digest_of(data, algorithm)
    r = httpx.post(f"{srv.url}/v2/{name}/blobs/uploads/", params={"digest": digest}, content=data, headers=bearer(token))
    assert r.status_code == 201, r.text
    return {"digest": digest, "size": len(data)}


def put_manifest(srv: RegistryServer, name: str, ref: str, doc: dict, token: str | None,
                 media_type: str = OCI_MANIFEST) -> httpx.Response:
    return httpx.put(f"{srv.url}/v2/{name}/manifests/{ref}", content=json.dumps(doc).encode(),
                     headers={**bearer(token), "Content-Type": media_type})


def image(srv: RegistryServer, name: str, token: str, payload: bytes, **extra: object) -> dict:
    """A small image manifest whose blobs are in ``name`` (not pushed itself)."""
    config = put_blob(srv, name, json.dumps({"architecture": "amd64", "os": "linux", "note": payload.decode()}).encode(), token)
    layer = put_blob(srv, name, payload, token)
    return {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {"mediaType": IMAGE_CONFIG, **config},
            "layers": [{"mediaType": LAYER, **layer}], **extra}


def artifact_for(srv: RegistryServer, name: str, token: str, subject: dict, artifact_type: str, note: str) -> dict:
    empty = put_blob(srv, name, b"{}", token)
    blob = put_blob(srv, name, note.encode(), token)
    return {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
            "config": {"mediaType": EMPTY_JSON, **empty}, "layers": [{"mediaType": "text/plain", **blob}],
            "subject": subject, "annotations": {"note": note}}


def descriptor(doc: dict, response: httpx.Response, media_type: str = OCI_MANIFEST) -> dict:
    data = json.dumps(doc).encode()
    assert response.headers["docker-content-digest"] == digest_of(data)
    return {"mediaType": media_type, "digest": digest_of(data), "size": len(data)}


def test_images_indexes_and_artifacts_are_stored_byte_exact_but_only_deltas_are_listed(
        registry_server: RegistryServer, artifacts: Artifacts):
    srv, token = registry_server, registry_server.token("mixed", "push")
    pushed = push(artifacts.other, f"{srv.host}/mixed/chat:1.0", token=token)  # other: not found by e2e's search
    img = image(srv, "mixed/chat", token, b"an image next to a delta")
    r = put_manifest(srv, "mixed/chat", "image-1", img, token)
    assert r.status_code == 201
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [descriptor(img, r)]}
    assert put_manifest(srv, "mixed/chat", "multi", index, token, OCI_INDEX).status_code == 201
    only = image(srv, "mixed/images-only", token, b"no delta here")
    assert put_manifest(srv, "mixed/images-only", "v1", only, token).status_code == 201

    got = httpx.get(f"{srv.url}/v2/mixed/chat/manifests/multi")
    assert got.content == json.dumps(index).encode() and got.headers["content-type"] == OCI_INDEX
    assert httpx.get(f"{srv.url}/v2/mixed/chat/manifests/image-1").content == json.dumps(img).encode()
    assert httpx.get(f"{srv.url}/v2/mixed/chat/tags/list").json()["tags"] == ["1.0", "image-1", "latest", "multi"]
    assert httpx.get(f"{srv.url}/v2/mixed/images-only/tags/list").json()["tags"] == ["v1"]  # no latest: no delta
    # `latest` is an ordinary tag where there are no deltas (docker push's default), the registry's where there are
    assert put_manifest(srv, "mixed/images-only", "latest", only, token).status_code == 201
    assert httpx.get(f"{srv.url}/v2/mixed/images-only/tags/list").json()["tags"] == ["latest", "v1"]
    r = put_manifest(srv, "mixed/chat", "latest", img, token)
    assert r.status_code == 400 and r.json()["errors"][0]["code"] == "UNSUPPORTED"
    # latest is still the newest delta version, though an image was tagged after it
    assert httpx.get(f"{srv.url}/v2/mixed/chat/manifests/latest").headers["docker-content-digest"] == pushed.digest

    found = httpx.get(f"{srv.url}/api/v1/deltas", params={"namespace": "mixed"}).json()["items"]
    assert [(d["name"], d["latest_version"]) for d in found] == [("mixed/chat", "1.0")]
    detail = httpx.get(f"{srv.url}/api/v1/deltas/mixed/chat").json()
    assert [v["version"] for v in detail["versions"]] == ["1.0"] and set(detail["tags"]) == {"1.0", "latest"}
    assert httpx.get(f"{srv.url}/api/v1/deltas/mixed/images-only").json()["versions"] == []
    not_delta = httpx.get(f"{srv.url}/api/v1/deltas/mixed/chat/versions/image-1")
    assert not_delta.status_code == 404 and "not a paramdelta delta" in not_delta.json()["errors"][0]["message"]
    page = httpx.get(f"{srv.url}/deltas/mixed/chat", headers={"Accept": "text/html"})
    assert page.status_code == 200 and "image-1" not in page.text and "1.0" in page.text

    missing = {**img, "layers": [{"mediaType": LAYER, "digest": digest_of(b"never pushed"), "size": 12}]}
    r = put_manifest(srv, "mixed/chat", "broken", missing, token)
    assert r.status_code == 400 and r.json()["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"
    r = put_manifest(srv, "mixed/chat", "broken", {"schemaVersion": 2, "config": {"mediaType": IMAGE_CONFIG}}, token)
    assert r.status_code == 400 and "config.digest" in r.json()["errors"][0]["message"]


def test_sha512_blobs_and_manifests_round_trip(registry_server: RegistryServer):
    srv, token = registry_server, registry_server.token("wide", "push")
    data = bytes(range(256)) * 40
    whole = put_blob(srv, "wide/x", data, token, "sha512")
    got = httpx.get(f"{srv.url}/v2/wide/x/blobs/{whole['digest']}")
    assert got.content == data and got.headers["docker-content-digest"] == whole["digest"]

    chunked = data[::-1]  # a session: POST, PATCH, PUT ?digest=sha512:...
    start = httpx.post(f"{srv.url}/v2/wide/x/blobs/uploads/", headers=bearer(token))
    location = srv.url + start.headers["location"]
    assert httpx.patch(location, content=chunked[:5000], headers={**bearer(token), "Content-Range": "0-4999"}).status_code == 202
    wrong = httpx.put(location, params={"digest": digest_of(b"other bytes", "sha512")}, content=chunked[5000:],
                      headers=bearer(token))
    assert wrong.status_code == 400 and wrong.json()["errors"][0]["code"] == "DIGEST_INVALID"  # checked with sha512 too
    start = httpx.post(f"{srv.url}/v2/wide/x/blobs/uploads/", headers=bearer(token))
    location = srv.url + start.headers["location"]
    httpx.patch(location, content=chunked[:5000], headers={**bearer(token), "Content-Range": "0-4999"})
    done = httpx.put(location, params={"digest": digest_of(chunked, "sha512")}, content=chunked[5000:], headers=bearer(token))
    assert done.status_code == 201 and done.headers["docker-content-digest"] == digest_of(chunked, "sha512")
    assert httpx.get(f"{srv.url}/v2/wide/x/blobs/{digest_of(chunked, 'sha512')}").content == chunked

    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {"mediaType": IMAGE_CONFIG, **whole},
           "layers": [{"mediaType": LAYER, "digest": digest_of(chunked, "sha512"), "size": len(chunked)}]}
    by512 = digest_of(json.dumps(doc).encode(), "sha512")
    r = put_manifest(srv, "wide/x", by512, doc, token)
    assert r.status_code == 201 and r.headers["docker-content-digest"] == by512
    assert httpx.get(f"{srv.url}/v2/wide/x/manifests/{by512}").content == json.dumps(doc).encode()
    assert httpx.head(f"{srv.url}/v2/wide/x/blobs/sha384:{'0' * 96}").status_code == 400  # not an algorithm served


def test_referrers_are_listed_filtered_and_announced_on_push(registry_server: RegistryServer):
    srv, token = registry_server, registry_server.token("refs", "push")
    img = image(srv, "refs/app", token, b"the subject")
    r = put_manifest(srv, "refs/app", "v1", img, token)
    subject = descriptor(img, r)
    assert "oci-subject" not in r.headers
    sig = artifact_for(srv, "refs/app", token, subject, "application/vnd.example.signature", "signed")
    sbom = artifact_for(srv, "refs/app", token, subject, "application/spdx+json", "sbom")
    for doc in (sig, sbom):
        r = put_manifest(srv, "refs/app", digest_of(json.dumps(doc).encode()), doc, token)
        assert r.status_code == 201 and r.headers["oci-subject"] == subject["digest"]

    listed = httpx.get(f"{srv.url}/v2/refs/app/referrers/{subject['digest']}")
    assert listed.status_code == 200 and listed.headers["content-type"] == OCI_INDEX
    assert "oci-filters-applied" not in listed.headers
    found = {m["artifactType"]: m for m in listed.json()["manifests"]}
    assert set(found) == {"application/vnd.example.signature", "application/spdx+json"}
    assert found["application/spdx+json"]["annotations"] == {"note": "sbom"}
    assert found["application/spdx+json"]["digest"] == digest_of(json.dumps(sbom).encode())

    only = httpx.get(f"{srv.url}/v2/refs/app/referrers/{subject['digest']}", params={"artifactType": "application/spdx+json"})
    assert only.headers["oci-filters-applied"] == "artifactType"
    assert [m["artifactType"] for m in only.json()["manifests"]] == ["application/spdx+json"]
    nothing = httpx.get(f"{srv.url}/v2/refs/app/referrers/{digest_of(b'no such subject')}")
    assert nothing.status_code == 200 and nothing.json()["manifests"] == []

    sig_digest = digest_of(json.dumps(sig).encode())
    assert httpx.delete(f"{srv.url}/v2/refs/app/manifests/{sig_digest}", headers=bearer(token)).status_code == 202
    after = httpx.get(f"{srv.url}/v2/refs/app/referrers/{subject['digest']}").json()["manifests"]
    assert [m["artifactType"] for m in after] == ["application/spdx+json"]  # a deleted referrer is not listed


def test_deletes_need_a_token_whose_scope_covers_them(registry_server: RegistryServer):
    srv, owner = registry_server, registry_server.token("keep", "push")
    img = image(srv, "keep/x", owner, b"not yours to delete")
    r = put_manifest(srv, "keep/x", "v1", img, owner)
    manifest, layer = descriptor(img, r)["digest"], img["layers"][0]["digest"]
    stranger, reader = srv.token("elsewhere", "push"), srv.token("keep", "pull")
    for path in (f"/v2/keep/x/manifests/{manifest}", "/v2/keep/x/manifests/v1", f"/v2/keep/x/blobs/{layer}"):
        assert httpx.delete(srv.url + path).status_code == 401, path
        for token in (stranger, reader):
            r = httpx.delete(srv.url + path, headers=bearer(token))
            assert r.status_code == 403 and r.json()["errors"][0]["code"] == "DENIED", path
    assert httpx.get(f"{srv.url}/v2/keep/x/manifests/v1").status_code == 200  # all still there
    assert httpx.get(f"{srv.url}/v2/keep/x/blobs/{layer}").status_code == 200

    assert httpx.delete(f"{srv.url}/v2/keep/x/blobs/{layer}", headers=bearer(owner)).status_code == 202
    assert httpx.get(f"{srv.url}/v2/keep/x/blobs/{layer}").status_code == 404
    assert httpx.delete(f"{srv.url}/v2/keep/x/manifests/{manifest}", headers=bearer(owner)).status_code == 202
    assert httpx.get(f"{srv.url}/v2/keep/x/manifests/v1").status_code == 404  # its tag went with it
    assert httpx.get(f"{srv.url}/v2/keep/x/tags/list").json()["tags"] == []


def test_a_deleted_delta_version_is_never_reused_and_its_blobs_stay_while_it_lives(
        registry_server: RegistryServer, artifacts: Artifacts):
    srv, token = registry_server, registry_server.token("tomb", "push")
    pushed = push(artifacts.other, f"{srv.host}/tomb/chat:1.0", token=token)
    oci = json.loads(httpx.get(f"{srv.url}/v2/tomb/chat/manifests/1.0").content)
    layer = oci["layers"][0]["digest"]
    kept = httpx.delete(f"{srv.url}/v2/tomb/chat/blobs/{layer}", headers=bearer(token))
    assert kept.status_code == 409 and pushed.digest in kept.json()["errors"][0]["message"]  # a live version stays whole
    img = image(srv, "tomb/chat", token, b"squatter")
    assert put_manifest(srv, "tomb/chat", "1.0", img, token).status_code == 409  # a version does not move

    assert httpx.delete(f"{srv.url}/v2/tomb/chat/manifests/1.0", headers=bearer(token)).status_code == 202
    assert httpx.get(f"{srv.url}/v2/tomb/chat/manifests/1.0").status_code == 404
    r = put_manifest(srv, "tomb/chat", "1.0", img, token)
    assert r.status_code == 409 and "was published and deleted" in r.json()["errors"][0]["message"]
    assert httpx.delete(f"{srv.url}/v2/tomb/chat/manifests/{pushed.digest}", headers=bearer(token)).status_code == 202
    assert put_manifest(srv, "tomb/chat", "1.0", img, token).status_code == 409  # by digest too: the name stays taken
    assert httpx.get(f"{srv.url}/v2/tomb/chat/tags/list").json()["tags"] == []

    # An image's tag, unlike a version, moves when pushed again (OCI tags do).
    assert put_manifest(srv, "tomb/chat", "edge", img, token).status_code == 201
    newer = image(srv, "tomb/chat", token, b"newer")
    r = put_manifest(srv, "tomb/chat", "edge", newer, token)
    assert r.status_code == 201
    assert httpx.get(f"{srv.url}/v2/tomb/chat/manifests/edge").headers["docker-content-digest"] == descriptor(newer, r)["digest"]


def test_catalog_lists_repositories_a_page_at_a_time(tmp_path: Path):
    srv = RegistryServer(tmp_path / "data").start()
    try:
        token = srv.token("cat", "push")
        for name in ("cat/a", "cat/b", "cat/c"):
            put_blob(srv, name, name.encode(), token)
        first = httpx.get(f"{srv.url}/v2/_catalog", params={"n": 2})
        assert first.json() == {"repositories": ["cat/a", "cat/b"]}
        assert first.headers["link"] == '</v2/_catalog?n=2&last=cat%2Fb>; rel="next"'
        rest = httpx.get(f"{srv.url}/v2/_catalog", params={"n": 2, "last": "cat/b"})
        assert rest.json() == {"repositories": ["cat/c"]} and "link" not in rest.headers
        assert httpx.get(f"{srv.url}/v2/_catalog").json()["repositories"] == ["cat/a", "cat/b", "cat/c"]
    finally:
        srv.stop()


def test_v2_challenges_anonymous_callers_and_the_realm_hands_out_anonymous_pull_tokens(registry_server: RegistryServer):
    srv, token = registry_server, registry_server.token("anon", "push")
    img = image(srv, "anon/x", token, b"public")
    assert put_manifest(srv, "anon/x", "v1", img, token).status_code == 201
    anon = httpx.get(f"{srv.url}/v2/")
    assert anon.status_code == 401
    assert anon.headers["www-authenticate"] == f'Bearer realm="{srv.url}/auth/token",service="paramdelta"'
    assert httpx.get(f"{srv.url}/v2/", headers=bearer(token)).status_code == 200
    assert httpx.get(f"{srv.url}/v2/", auth=("someone", token)).status_code == 200
    assert httpx.get(f"{srv.url}/v2/", auth=("someone", "pdt_wrong")).status_code == 401

    issued = httpx.get(f"{srv.url}/auth/token", params={"service": "paramdelta", "scope": "repository:anon/x:pull,push"})
    assert issued.status_code == 200
    anonymous = issued.json()["token"]
    assert anonymous != token and httpx.get(f"{srv.url}/v2/", headers=bearer(anonymous)).status_code == 200
    assert httpx.get(f"{srv.url}/v2/anon/x/manifests/v1", headers=bearer(anonymous)).status_code == 200
    pushed = put_manifest(srv, "anon/x", "v2", img, anonymous)
    assert pushed.status_code == 401 and pushed.headers["www-authenticate"].startswith("Bearer realm=")  # pull only
    assert httpx.delete(f"{srv.url}/v2/anon/x/manifests/v1", headers=bearer(anonymous)).status_code == 401
    assert httpx.get(f"{srv.url}/auth/token", auth=("someone", token)).json()["token"] == token  # as before
    for wrong in (("someone", "pdt_wrong"), ("someone", "")):  # credentials that fail are refused, not taken as none
        assert httpx.get(f"{srv.url}/auth/token", auth=wrong).status_code == 401, wrong


def test_without_anonymous_pull_the_realm_gives_nothing_to_anonymous_callers(tmp_path: Path):
    srv = RegistryServer(tmp_path / "data", args=("--no-anonymous-pull",)).start()
    try:
        assert httpx.get(f"{srv.url}/auth/token").status_code == 401
        assert httpx.get(f"{srv.url}/v2/", headers=bearer("anonymous-pull")).status_code == 401
        assert httpx.get(f"{srv.url}/v2/_catalog").status_code == 401
        reader = srv.token("mine", "pull")
        put_blob(srv, "theirs/x", b"x", srv.token("theirs", "push"))
        put_blob(srv, "mine/x", b"x", srv.token("mine", "push"))
        assert httpx.get(f"{srv.url}/v2/_catalog", headers=bearer(reader)).json()["repositories"] == ["mine/x"]
    finally:
        srv.stop()


# -- skopeo: a docker-style client that sends credentials only when /v2/ asks for them -----------------


def oci_layout(root: Path, note: str) -> Path:
    """An OCI image layout holding one small image, tagged ``v1`` (what `skopeo copy oci:DIR:v1` reads)."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def store(data: bytes) -> dict:
        digest = digest_of(data)
        (blobs / digest.removeprefix("sha256:")).write_bytes(data)
        return {"digest": digest, "size": len(data)}

    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w") as tar:
        payload = note.encode()
        info = tarfile.TarInfo("hello.txt")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    layer = gzip.compress(tar_bytes.getvalue(), mtime=0)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [digest_of(tar_bytes.getvalue())]}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": IMAGE_CONFIG, **store(config)},
                           "layers": [{"mediaType": LAYER, **store(layer)}]}).encode()
    index = {"schemaVersion": 2, "manifests": [{"mediaType": OCI_MANIFEST, **store(manifest),
                                                "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}
    (root / "index.json").write_text(json.dumps(index))
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return root


def test_skopeo_copies_an_image_into_the_registry_with_dest_creds_while_anonymous_pull_is_on(
        registry_server: RegistryServer, tmp_path: Path):
    skopeo = shutil.which("skopeo")
    assert skopeo, "skopeo is needed (scripts/install-system-deps.sh installs it)"
    srv, token = registry_server, registry_server.token("copied", "push")
    layout = oci_layout(tmp_path / "layout", "copied by skopeo")
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "REGISTRY_AUTH_FILE": str(tmp_path / "auth.json")}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([skopeo, "--insecure-policy", *args], capture_output=True, text=True, timeout=120, env=env)

    refused = run("copy", f"oci:{layout}:v1", f"docker://{srv.host}/copied/image:v1", "--dest-tls-verify=false")
    assert refused.returncode != 0  # anonymous pull is on; anonymous push is not
    done = run("copy", f"oci:{layout}:v1", f"docker://{srv.host}/copied/image:v1", "--dest-tls-verify=false",
               "--dest-creds", f"someone:{token}")
    assert done.returncode == 0, done.stderr
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"]
    got = httpx.get(f"{srv.url}/v2/copied/image/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert got.headers["docker-content-digest"] == digest  # the manifest as it was, byte for byte

    # And out again, anonymously (skopeo follows the challenge to an anonymous pull token).
    back = run("copy", f"docker://{srv.host}/copied/image:v1", f"oci:{tmp_path / 'back'}:v1", "--src-tls-verify=false")
    assert back.returncode == 0, back.stderr
    assert json.loads((tmp_path / "back" / "index.json").read_text())["manifests"][0]["digest"] == digest


def test_gc_keeps_what_a_live_index_lists_and_the_referrers_of_live_manifests(tmp_path: Path):
    srv = RegistryServer(tmp_path / "data").start()  # its own: a GC with no grace period on the shared one would sweep others
    try:
        token = srv.token("gc", "push")
        child = image(srv, "gc/app", token, b"listed by an index only")
        child_digest = descriptor(child, put_manifest(srv, "gc/app", digest_of(json.dumps(child).encode()), child, token))
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [child_digest]}
        assert put_manifest(srv, "gc/app", "v1", index, token, OCI_INDEX).status_code == 201
        signed = artifact_for(srv, "gc/app", token, {"mediaType": OCI_INDEX, "digest": digest_of(json.dumps(index).encode()),
                                                     "size": len(json.dumps(index))}, "application/vnd.example.signature", "sig")
        sig_digest = digest_of(json.dumps(signed).encode())
        assert put_manifest(srv, "gc/app", sig_digest, signed, token).status_code == 201
        orphan = image(srv, "gc/app", token, b"untagged and unlisted")
        orphan_digest = digest_of(json.dumps(orphan).encode())
        assert put_manifest(srv, "gc/app", orphan_digest, orphan, token).status_code == 201

        gc = subprocess.run([sys.executable, "-m", "deltaformat.cli", "gc", "--grace", "0", "--json", "--data", str(srv.data)],
                            capture_output=True, text=True, timeout=120)
        assert gc.returncode == 0, gc.stderr
        assert json.loads(gc.stdout)["manifests_deleted"] == 1  # the orphan, and only it
        assert httpx.get(f"{srv.url}/v2/gc/app/manifests/{orphan_digest}").status_code == 404
        assert httpx.get(f"{srv.url}/v2/gc/app/manifests/{child_digest['digest']}").status_code == 200
        assert httpx.get(f"{srv.url}/v2/gc/app/blobs/{child['layers'][0]['digest']}").content == b"listed by an index only"
        assert httpx.get(f"{srv.url}/v2/gc/app/manifests/{sig_digest}").status_code == 200
        assert httpx.get(f"{srv.url}/v2/gc/app/blobs/{signed['layers'][0]['digest']}").content == b"sig"
    finally:
        srv.stop()
