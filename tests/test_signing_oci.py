"""Signed deltas in registries (issue #12, item 3): the signature is an OCI referrer of the delta's manifest.

Against a real stock registry (Debian's docker-registry, distribution 2.8: no referrers API, so
the client keeps the referrers tag schema) and against ours, which serves the referrers API.
``apply --require-signature`` must refuse before a single blob of the delta is downloaded: the
registry's own access log is the witness.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deltaformat import client, referrers, signing
from deltaformat.artifact import blob_path, open_artifact
from deltaformat.cache import Cache
from deltaformat.digests import blob_digest, hex_of
from deltaformat.oci import OCI_IMAGE_MANIFEST, Descriptor, parse_oci_manifest
from paramdelta_dev.artifacts import Artifacts
from paramdelta_dev.distribution import distribution_registry
from paramdelta_dev.renamed import renamed
from paramdelta_dev.serve import RegistryServer
from paramdelta_dev.signed import Keys, assert_refused, change_manifest_byte, cli, copy_of, write_key_pair
from paramdelta_dev.tiny_models import load_state

pytestmark = pytest.mark.usefixtures("client_env")
NAME = "acme/tiny-chat"
SKOPEO = Path("/usr/bin/skopeo")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    folder = tmp_path_factory.mktemp("keys")
    return Keys(*write_key_pair(folder, "signer"), *write_key_pair(folder, "stranger"))


@pytest.fixture
def stock(tmp_path: Path) -> Iterator[str]:
    """host:port of a fresh docker-registry, anonymous push allowed; its log is tmp_path/distribution/registry.log."""
    with distribution_registry(tmp_path / "distribution") as host:
        yield host


def fingerprint(public: Path) -> str:
    return signing.key_fingerprint(signing.load_public_key(public))


def served(host: str, tag: str = "1.0") -> tuple[str, bytes]:
    with client.RegistryClient(f"http://{host}") as rc:
        return rc.resolve(NAME, tag)


def blob_gets(log: Path, oci_bytes: bytes) -> int:
    """How many times the registry served any blob of the delta (its manifest.json or a layer)."""
    oci = parse_oci_manifest(oci_bytes)
    text = log.read_text()
    return sum(text.count(f'"GET /v2/{NAME}/blobs/{d.digest} ') for d in [oci.config, *oci.layers])


def attach(host: str, bundle: bytes, subject: bytes, key: str) -> None:
    """Attach ``bundle`` as a signature referrer of the manifest ``subject``, as anyone with push access can."""
    with client.RegistryClient(f"http://{host}") as rc:
        descriptor = Descriptor(mediaType=OCI_IMAGE_MANIFEST, digest=blob_digest(subject), size=len(subject))
        referrers.push_referrer(rc, NAME, descriptor, signing.BUNDLE_MEDIA_TYPE, bundle, {signing.KEY_ANNOTATION: key})


def signature_of(host: str, subject: str) -> bytes:
    with client.RegistryClient(f"http://{host}") as rc:
        [listed] = referrers.list_referrers(rc, NAME, subject, signing.BUNDLE_MEDIA_TYPE)
        [layer] = referrers.get_manifest(rc, NAME, listed.digest).layers
        return referrers.get_blob(rc, NAME, layer, signing.MAX_BUNDLE_BYTES)


def push_and_sign(artifact: Path, host: str, keys: Keys, cache: Path) -> str:
    ref = f"{host}/{NAME}:1.0"
    client.push(artifact, ref, quiet=True)
    done = cli("sign", ref, "--key", str(keys.private), cache=cache)
    assert done.returncode == 0, done.stderr
    return ref


def test_sign_verify_and_list_on_a_stock_registry(stock: str, artifacts: Artifacts, keys: Keys, tmp_path: Path, client_env: Path):
    ref = push_and_sign(artifacts.delta, stock, keys, client_env)
    digest, _ = served(stock)
    # no referrers API there: the signature is listed under the referrers tag schema's tag
    assert httpx.get(f"http://{stock}/v2/{NAME}/referrers/{digest}").status_code == 404
    tags = httpx.get(f"http://{stock}/v2/{NAME}/tags/list").json()["tags"]
    assert sorted(tags) == sorted(["1.0", f"sha256-{hex_of(digest)}"])
    with client.RegistryClient(f"http://{stock}") as rc:
        [listed] = signing.reference_signatures(rc, NAME, digest)
    assert listed.key == fingerprint(keys.public) and listed.created

    done = cli("verify", ref, "--key", str(keys.public), cache=client_env)
    assert done.returncode == 0, done.stderr
    assert f"signed by key {fingerprint(keys.public)}" in done.stdout


def test_a_referrers_index_stripped_of_artifact_types_still_verifies(stock: str, artifacts: Artifacts, keys: Keys,
                                                                    client_env: Path):
    """A tool that rewrites the referrers tag's index may drop its entries' artifactType and annotations:
    the signature is still found, from the referrer's own manifest."""
    ref = push_and_sign(artifacts.delta, stock, keys, client_env)
    digest, _ = served(stock)
    tag = referrers.tag_schema_tag(digest)
    index = httpx.get(f"http://{stock}/v2/{NAME}/manifests/{tag}", headers={"Accept": referrers.OCI_IMAGE_INDEX}).json()
    index["manifests"] = [{k: v for k, v in d.items() if k in ("mediaType", "digest", "size")} for d in index["manifests"]]
    put = httpx.put(f"http://{stock}/v2/{NAME}/manifests/{tag}", content=json.dumps(index),
                    headers={"Content-Type": referrers.OCI_IMAGE_INDEX})
    assert put.status_code == 201, put.text
    done = cli("verify", ref, "--key", str(keys.public), cache=client_env)
    assert done.returncode == 0, done.stderr
    assert_refused(cli("verify", ref, "--key", str(keys.other_public), cache=client_env), "not signed by key")


def test_apply_require_signature_from_a_stock_registry(stock: str, artifacts: Artifacts, keys: Keys, tmp_path: Path, client_env: Path):
    ref = push_and_sign(artifacts.delta, stock, keys, client_env)
    done = cli("apply", ref, "--base", str(artifacts.base), "--out", str(tmp_path / "model"),
               "--require-signature", str(keys.public), cache=client_env)
    assert done.returncode == 0, done.stderr
    applied, post = load_state(tmp_path / "model"), load_state(artifacts.post)
    assert applied.keys() == post.keys() and all(applied[k].equal(post[k]) for k in post)


def _unsigned(host: str, artifacts: Artifacts, keys: Keys, tmp_path: Path, cache: Path) -> tuple[str, ...]:
    client.push(artifacts.delta, f"{host}/{NAME}:1.0", quiet=True)
    return ("not signed",)


def _wrong_key(host: str, artifacts: Artifacts, keys: Keys, tmp_path: Path, cache: Path) -> tuple[str, ...]:
    client.push(artifacts.delta, f"{host}/{NAME}:1.0", quiet=True)
    assert cli("sign", f"{host}/{NAME}:1.0", "--key", str(keys.other_private), cache=cache).returncode == 0
    return ("not signed by key", fingerprint(keys.other_public))


def _replaced(host: str, artifacts: Artifacts, keys: Keys, tmp_path: Path, cache: Path, folder: Path) -> None:
    """The signed delta replaced under its tag by ``folder``, with the original signature attached to it."""
    push_and_sign(artifacts.delta, host, keys, cache)
    bundle = signature_of(host, served(host)[0])
    client.push(folder, f"{host}/{NAME}:1.0", quiet=True)
    attach(host, bundle, served(host)[1], fingerprint(keys.public))


def _one_blob_byte(host: str, artifacts: Artifacts, keys: Keys, tmp_path: Path, cache: Path) -> tuple[str, ...]:
    """One byte of a blob changed; manifest.json names the changed blob (a registry checks digests, so a blob
    cannot change under its name there: what can change is which blob the delta is made of)."""
    folder = copy_of(artifacts.delta, tmp_path, "changed")
    art = open_artifact(folder)
    old = max(art.manifest.blob_digests(), key=lambda d: blob_path(art.blob_dir, d).stat().st_size)
    data = bytearray(blob_path(art.blob_dir, old).read_bytes())
    data[len(data) // 2] ^= 0x01
    new = blob_digest(bytes(data))
    blob_path(art.blob_dir, old).unlink()
    blob_path(art.blob_dir, new).write_bytes(bytes(data))
    manifest = (folder / "manifest.json").read_bytes().replace(old.encode(), new.encode())
    (folder / "manifest.json").write_bytes(manifest)
    (folder / "manifest.json.sha256").write_text(blob_digest(manifest) + "\n")
    _replaced(host, artifacts, keys, tmp_path, cache, folder)
    return ("changed after it was signed",)


def _one_manifest_byte(host: str, artifacts: Artifacts, keys: Keys, tmp_path: Path, cache: Path) -> tuple[str, ...]:
    folder = copy_of(artifacts.delta, tmp_path, "changed")
    change_manifest_byte(folder)
    _replaced(host, artifacts, keys, tmp_path, cache, folder)
    return ("manifest.json", "changed after it was signed")


REFUSALS = {"unsigned": _unsigned, "wrong-key": _wrong_key, "one-blob-byte": _one_blob_byte,
            "one-manifest-byte": _one_manifest_byte}


@pytest.mark.parametrize("case", REFUSALS)
def test_require_signature_refuses_before_any_blob_is_downloaded(case: str, stock: str, artifacts: Artifacts, keys: Keys,
                                                                 tmp_path: Path, client_env: Path):
    words = REFUSALS[case](stock, artifacts, keys, tmp_path, client_env)
    log = tmp_path / "distribution" / "registry.log"
    _, oci_bytes = served(stock)
    before = blob_gets(log, oci_bytes)
    out = tmp_path / "model"
    done = cli("apply", f"{stock}/{NAME}:1.0", "--base", str(artifacts.base), "--out", str(out),
               "--require-signature", str(keys.public), cache=client_env)
    assert_refused(done, f"{NAME}:1.0@", *words)
    assert blob_gets(log, oci_bytes) == before == 0  # not manifest.json, not one layer
    assert not out.exists()


def test_a_blob_corrupted_in_the_registry_is_refused_on_download(stock: str, artifacts: Artifacts, keys: Keys,
                                                                 tmp_path: Path, client_env: Path):
    """The signature vouches for digests; the bytes a registry serves are checked against them as they arrive."""
    ref = push_and_sign(artifacts.delta, stock, keys, client_env)
    layer = parse_oci_manifest(served(stock)[1]).layers[0].digest
    data = next((tmp_path / "distribution" / "storage").rglob(f"blobs/sha256/{hex_of(layer)[:2]}/{hex_of(layer)}/data"))
    data.write_bytes(b"\0" + data.read_bytes()[1:])
    done = cli("apply", ref, "--base", str(artifacts.base), "--out", str(tmp_path / "model"),
               "--require-signature", str(keys.public), cache=client_env)
    assert done.returncode == 4 and layer in done.stderr, done.stderr
    assert not (tmp_path / "model").exists()


def test_signatures_survive_a_skopeo_copy(artifacts: Artifacts, keys: Keys, tmp_path: Path, client_env: Path):
    """skopeo copies the delta (digest preserved) and its referrers tag: the signature index with its referrer
    manifests and the bundle. skopeo 1.9 rewrites the index itself (dropping its entries' artifactType), so that
    copy cannot preserve the index's digest; the referrers it lists are copied byte for byte. The copy verifies
    on the destination with the same key."""
    if not SKOPEO.exists():
        pytest.fail(f"{SKOPEO} is missing: apt-get install -y skopeo (scripts/install-system-deps.sh installs it)")
    with distribution_registry(tmp_path / "a") as a, distribution_registry(tmp_path / "b") as b:
        push_and_sign(artifacts.delta, a, keys, client_env)
        digest, _ = served(a)
        for tag, preserve in (("1.0", ["--preserve-digests"]), (referrers.tag_schema_tag(digest), [])):
            copy = subprocess.run([str(SKOPEO), "--insecure-policy", "copy", "--all", *preserve, "--src-tls-verify=false",
                                   "--dest-tls-verify=false", f"docker://{a}/{NAME}:{tag}", f"docker://{b}/{NAME}:{tag}"],
                                  capture_output=True, text=True, timeout=300)
            assert copy.returncode == 0, copy.stderr
        assert served(b)[0] == digest
        with client.RegistryClient(f"http://{a}") as ra, client.RegistryClient(f"http://{b}") as rb:
            assert [d.digest for d in referrers.list_referrers(rb, NAME, digest)] == \
                [d.digest for d in referrers.list_referrers(ra, NAME, digest)]
        done = cli("verify", f"{b}/{NAME}:1.0", "--key", str(keys.public), cache=client_env)
        assert done.returncode == 0, done.stderr
        assert f"signed by key {fingerprint(keys.public)}" in done.stdout


# -- our registry: it stores any OCI manifest and serves the referrers API (issue #12, item 1) --------


def test_our_registry_lists_signatures_through_the_referrers_api(registry_server: RegistryServer, artifacts: Artifacts,
                                                                keys: Keys, tmp_path: Path, client_env: Path):
    srv = registry_server
    name = "signing/tiny-chat"
    ref = f"{srv.host}/{name}:1.0"
    token = srv.token("signing", "push")
    client.push(renamed(artifacts.delta, name, "1.0", tmp_path), ref, token=token, quiet=True)
    done = cli("sign", ref, "--key", str(keys.private), "--registry", srv.url, "--token", token, cache=client_env)
    assert done.returncode == 0, done.stderr
    with client.RegistryClient(srv.url) as rc:
        digest, _ = rc.resolve(name, "1.0")
        listing = httpx.get(f"{srv.url}/v2/{name}/referrers/{digest}", params={"artifactType": signing.BUNDLE_MEDIA_TYPE})
        assert listing.status_code == 200, listing.text
        [entry] = listing.json()["manifests"]
        assert entry["annotations"][signing.KEY_ANNOTATION] == fingerprint(keys.public)
        # the registry indexed the referrer itself (OCI-Subject): no referrers tag was made
        assert referrers.tag_schema_tag(digest) not in httpx.get(f"{srv.url}/v2/{name}/tags/list").json()["tags"]
        [listed] = signing.reference_signatures(rc, name, digest)
        assert listed.key == fingerprint(keys.public)

    done = cli("verify", ref, "--key", str(keys.public), cache=client_env)
    assert done.returncode == 0, done.stderr
    assert_refused(cli("verify", ref, "--key", str(keys.other_public), cache=client_env), "not signed by key")
    # the delta's page names the key (and when, as the signer said)
    page = httpx.get(f"{srv.url}/deltas/{name}").text
    assert f"signature by key {fingerprint(keys.public)}, made {listed.created}" in page


def test_our_registry_refuses_unsigned_before_any_blob(registry_server: RegistryServer, artifacts: Artifacts, keys: Keys,
                                                       tmp_path: Path, client_env: Path):
    srv = registry_server
    name = "signing/unsigned"
    client.push(renamed(artifacts.delta, name, "1.0", tmp_path), f"{srv.host}/{name}:1.0", token=srv.token("signing", "push"),
                quiet=True)
    out = tmp_path / "model"
    done = cli("apply", f"{srv.host}/{name}:1.0", "--base", str(artifacts.base), "--out", str(out),
               "--require-signature", str(keys.public), cache=client_env)
    assert_refused(done, "not signed")
    assert 'id="signatures">not signed' in httpx.get(f"{srv.url}/deltas/{name}").text
    assert not out.exists()
    assert not list(Cache(client_env).blob_dir.glob("*")) and not list(Cache(client_env).root.glob("partial/*"))  # nothing downloaded
