"""The library orchestrates (issue #11, item 3): manifest -> pre-flight against the base ->
download -> compute, so nothing is downloaded for a base that would be refused.

The registry is a real ``paramdelta serve`` on loopback, reached through a counting proxy
(paramdelta_dev/counting_proxy.py) that records every request and the bytes it served:
the proof of what was downloaded is the wire, not the client's word.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import deltaformat
from deltaformat import client
from deltaformat.artifact import MANIFEST_FILE, open_artifact
from deltaformat.cache import Cache
from deltaformat.digests import blob_digest
from deltaformat.errors import EXIT_CODES, IncompatibleBaseError
from deltaformat.manifest import Manifest
from deltaformat.resolve import FolderSource, Source, resolve
from paramdelta_dev.artifacts import Artifacts
from paramdelta_dev.counting_proxy import CountingProxy
from paramdelta_dev.distribution import distribution_registry
from paramdelta_dev.renamed import renamed
from paramdelta_dev.serve import RegistryServer
from paramdelta_dev.tiny_models import new_model, save

pytestmark = pytest.mark.usefixtures("client_env")
NAME = "acme/orchestrate"


@pytest.fixture(scope="module")
def registry_server(tmp_path_factory: pytest.TempPathFactory):
    """This module's own registry: the session one is shared with tests that search it and expect only their deltas."""
    server = RegistryServer(tmp_path_factory.mktemp("registry") / "data").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def published(registry_server: RegistryServer, artifacts: Artifacts, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The delta, published as acme/orchestrate:1.0; returns the folder pushed (its manifest.json is what is served)."""
    folder = renamed(artifacts.delta, NAME, "1.0", tmp_path_factory.mktemp("orchestrate"))
    client.push(folder, f"{registry_server.host}/{NAME}:1.0", token=registry_server.token("acme", "push"), quiet=True)
    return folder


@pytest.fixture(scope="module")
def wrong_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model the delta does not fit: a wider vocabulary, so the embeddings differ in shape."""
    return save(new_model(0, vocab=128), tmp_path_factory.mktemp("wrong") / "wider-vocab")


@pytest.fixture
def proxy(registry_server: RegistryServer):
    with CountingProxy(registry_server.url) as p:
        yield p


def manifest_path(version: str = "1.0", name: str = NAME) -> str:
    return f"/api/v1/deltas/{name}/versions/{version}/manifest"


def config_path(folder: Path, name: str = NAME) -> str:
    """manifest.json as the OCI config blob: the other way it can go over the wire."""
    return f"/v2/{name}/blobs/{blob_digest((folder / MANIFEST_FILE).read_bytes())}"


def assert_manifest_json_served_once(proxy: CountingProxy, folder: Path, name: str = NAME) -> None:
    """manifest.json, by the paramdelta API or as the config blob, exactly once; then the OCI manifest and each
    layer once: a download after a pre-flight fetches nothing twice."""
    paths = [s.path for s in proxy.served if s.status == 200]  # not a stock registry's 404 to the paramdelta API
    manifest_json = [p for p in paths if p in (manifest_path(name=name), config_path(folder, name))]
    assert len(manifest_json) == 1, paths
    layers = {f"/v2/{name}/blobs/{d}" for d in open_artifact(folder).manifest.blob_digests()}
    assert sorted(p for p in paths if p not in manifest_json and p != f"/v2/{name}/manifests/1.0") == sorted(layers), paths


def assert_only_the_manifest_was_served(proxy: CountingProxy, published: Path) -> None:
    assert proxy.paths() == [manifest_path()]
    assert proxy.blob_requests() == []
    assert proxy.body_bytes() == len((published / MANIFEST_FILE).read_bytes())
    assert not (Cache().root / "blobs").exists()  # and nothing reached the download cache


def test_library_apply_refuses_a_wrong_base_after_fetching_only_the_manifest(published: Path, wrong_base: Path,
                                                                             proxy: CountingProxy, tmp_path: Path):
    with pytest.raises(IncompatibleBaseError, match="model.embed_tokens.weight") as refused:
        deltaformat.apply([f"{proxy.host}/{NAME}:1.0"], wrong_base, tmp_path / "out", quiet=True)
    assert refused.value.exit_code == 6
    assert_only_the_manifest_was_served(proxy, published)
    assert not (tmp_path / "out").exists()


def test_library_apply_on_a_fitting_base_downloads_the_blobs_through_the_same_proxy(published: Path, artifacts: Artifacts,
                                                                                    proxy: CountingProxy, tmp_path: Path):
    """The counter's positive control: where the base fits, the blobs do go over this wire."""
    result = deltaformat.apply([f"{proxy.host}/{NAME}:1.0"], artifacts.base, tmp_path / "out", quiet=True)
    assert result.verified_exact
    assert proxy.paths()[0] == manifest_path()  # the pre-flight came first
    stored = open_artifact(published).manifest.stored_bytes()
    assert len(proxy.blob_requests()) >= len(open_artifact(published).manifest.blob_digests())
    assert proxy.body_bytes() >= stored


def test_verify_with_a_wrong_base_refuses_after_fetching_only_the_manifest(published: Path, wrong_base: Path,
                                                                           proxy: CountingProxy):
    with pytest.raises(IncompatibleBaseError, match="model.embed_tokens.weight"):
        deltaformat.verify(f"{proxy.host}/{NAME}:1.0", base=wrong_base, quiet=True)
    assert_only_the_manifest_was_served(proxy, published)


def test_cli_apply_with_a_wrong_base_exits_incompatible_after_fetching_only_the_manifest(
        published: Path, wrong_base: Path, proxy: CountingProxy, tmp_path: Path, client_env: Path):
    env = {**os.environ, "PARAMDELTA_CACHE": str(client_env)}
    done = subprocess.run([sys.executable, "-m", "deltaformat.cli", "apply", f"{proxy.host}/{NAME}:1.0",
                           "--base", str(wrong_base), "--out", str(tmp_path / "out"), "-q"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == IncompatibleBaseError.exit_code
    assert (IncompatibleBaseError.exit_code, IncompatibleBaseError.__doc__.split("\n")[0]) in EXIT_CODES
    assert len(done.stderr.strip().splitlines()) == 1 and "model.embed_tokens.weight" in done.stderr
    assert_only_the_manifest_was_served(proxy, published)
    assert not (tmp_path / "out").exists()


def test_client_preflight_is_the_library_preflight(published: Path, wrong_base: Path, artifacts: Artifacts,
                                                   proxy: CountingProxy):
    ref = f"{proxy.host}/{NAME}:1.0"
    assert client.preflight(ref, artifacts.newbase) == deltaformat.preflight(ref, artifacts.newbase)
    with pytest.raises(IncompatibleBaseError, match=f"does not fit {ref}"):
        deltaformat.preflight(ref, wrong_base)
    assert proxy.blob_requests() == []


class _Recording(Source):
    """A folder source that records which of its two steps ran."""

    def __init__(self, folder: Path):
        self.inner, self.location, self.steps = FolderSource(folder), str(folder), []

    def manifest(self) -> Manifest:
        self.steps.append("manifest")
        return self.inner.manifest()

    def materialize(self, *, quiet: bool = False):
        self.steps.append("materialize")
        return self.inner.materialize(quiet=quiet)


def test_apply_materialises_no_delta_until_every_manifest_fits_the_base(artifacts: Artifacts, wrong_base: Path, tmp_path: Path):
    first, second = _Recording(artifacts.delta), _Recording(artifacts.other)
    with pytest.raises(IncompatibleBaseError):
        deltaformat.apply([first, second], wrong_base, tmp_path / "out", quiet=True)
    assert first.steps == ["manifest"] and second.steps == ["manifest"]

    first, second = _Recording(artifacts.delta), _Recording(artifacts.other)
    deltaformat.apply([first, second], artifacts.newbase, tmp_path / "out", alphas=[0.5, 0.5], quiet=True)
    assert first.steps == ["manifest", "materialize"] and second.steps == ["manifest", "materialize"]


def test_resolve_names_the_kind_of_reference(artifacts: Artifacts, tmp_path: Path):
    assert isinstance(resolve(artifacts.delta), FolderSource)
    assert resolve(open_artifact(artifacts.delta)).manifest() == open_artifact(artifacts.delta).manifest
    assert resolve("127.0.0.1:1/acme/x:1.0").location == "127.0.0.1:1/acme/x:1.0"  # nothing contacted yet
    with pytest.raises(ValueError, match="no such artifact folder, and not a registry reference"):
        resolve(str(tmp_path / "Not-There"))


class _Moved(Source):
    """A reference whose tag moves between the two steps: the manifest checked is not the one downloaded."""

    def __init__(self, checked: Path, downloaded: Path):
        self.checked, self.downloaded, self.location = FolderSource(checked), FolderSource(downloaded), "acme/moving:latest"

    def manifest(self) -> Manifest:
        return self.checked.manifest()

    def materialize(self, *, quiet: bool = False):
        return self.downloaded.materialize(quiet=quiet)


def test_a_delta_whose_manifest_changed_after_the_preflight_is_checked_again(artifacts: Artifacts, wrong_base: Path,
                                                                             tmp_path: Path):
    other = deltaformat.extract(wrong_base, wrong_base, tmp_path / "for-the-wider-vocab", quiet=True)
    assert other.base.id != open_artifact(artifacts.delta).manifest.base.id
    with pytest.raises(IncompatibleBaseError, match="acme/moving:latest"):
        deltaformat.apply([_Moved(artifacts.delta, tmp_path / "for-the-wider-vocab")], artifacts.newbase, tmp_path / "out",
                          quiet=True)
    with pytest.raises(IncompatibleBaseError, match="acme/moving:latest"):
        deltaformat.verify(_Moved(artifacts.delta, tmp_path / "for-the-wider-vocab"), base=artifacts.newbase, quiet=True)
    assert not (tmp_path / "out").exists()


# -- manifest.json goes over the wire once per reference: the pre-flight's bytes are kept for the download


def test_library_apply_fetches_manifest_json_once(published: Path, artifacts: Artifacts, proxy: CountingProxy,
                                                  tmp_path: Path):
    deltaformat.apply([f"{proxy.host}/{NAME}:1.0"], artifacts.base, tmp_path / "out", quiet=True)
    assert proxy.paths()[0] == manifest_path()  # the pre-flight's request is the one kept
    assert_manifest_json_served_once(proxy, published)
    assert Cache().read_blob(blob_digest((published / MANIFEST_FILE).read_bytes())) is not None  # cached all the same


def test_verify_with_a_base_fetches_manifest_json_once(published: Path, artifacts: Artifacts, proxy: CountingProxy):
    assert deltaformat.verify(f"{proxy.host}/{NAME}:1.0", base=artifacts.base, quiet=True).round_trip
    assert_manifest_json_served_once(proxy, published)


def test_cli_apply_fetches_manifest_json_once(published: Path, artifacts: Artifacts, proxy: CountingProxy,
                                              tmp_path: Path, client_env: Path):
    env = {**os.environ, "PARAMDELTA_CACHE": str(client_env)}
    done = subprocess.run([sys.executable, "-m", "deltaformat.cli", "apply", f"{proxy.host}/{NAME}:1.0",
                           "--base", str(artifacts.base), "--out", str(tmp_path / "out"), "-q"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert_manifest_json_served_once(proxy, published)


def test_pull_fetches_manifest_json_once(published: Path, proxy: CountingProxy, tmp_path: Path):
    """pull has no pre-flight: manifest.json comes as the config blob, once."""
    client.pull(f"{proxy.host}/{NAME}:1.0", tmp_path / "pulled", quiet=True)
    assert_manifest_json_served_once(proxy, published)
    assert proxy.paths()[0] == f"/v2/{NAME}/manifests/1.0"


def test_a_tag_moved_after_the_preflight_downloads_the_new_manifest_json(registry_server: RegistryServer, published: Path,
                                                                        artifacts: Artifacts, proxy: CountingProxy,
                                                                        tmp_path: Path):
    """The kept bytes are used only where their digest is the config the OCI manifest names."""
    name, push_token = "acme/moves", registry_server.token("acme", "push")
    one, two = (renamed(artifacts.delta, name, v, tmp_path / v) for v in ("1.0", "2.0"))
    client.push(one, f"{registry_server.host}/{name}:1.0", token=push_token, quiet=True)
    source = resolve(f"{proxy.host}/{name}:latest")
    assert source.manifest().version == "1.0"
    client.push(two, f"{registry_server.host}/{name}:2.0", token=push_token, quiet=True)
    assert source.materialize(quiet=True).manifest.version == "2.0"
    assert proxy.paths().count(config_path(two, name)) == 1  # the new one downloaded; the old bytes not used for it


def test_stock_registry_apply_fetches_each_manifest_once(published: Path, artifacts: Artifacts, tmp_path: Path):
    """A registry without the paramdelta API: the pre-flight reads the OCI manifest and its config blob;
    the download reuses both."""
    with distribution_registry(tmp_path / "distribution") as stock:
        client.push(published, f"{stock}/{NAME}:1.0", quiet=True)
        with CountingProxy(f"http://{stock}") as proxy:
            deltaformat.apply([f"{proxy.host}/{NAME}:1.0"], artifacts.base, tmp_path / "out", quiet=True)
    assert proxy.paths()[0] == manifest_path()  # answered 404: no paramdelta API
    assert proxy.paths().count(f"/v2/{NAME}/manifests/1.0") == 1
    assert_manifest_json_served_once(proxy, published)


def test_the_deprecated_manifest_json_still_answers_and_warns(published: Path, registry_server: RegistryServer):
    """RegistryClient.manifest_json() was replaced by fetch_manifest_json(); a caller of the old name keeps working."""
    from deltaformat.errors import ParamDeltaDeprecationWarning
    from deltaformat.registry_client import RegistryClient

    with RegistryClient(registry_server.url) as c:
        with pytest.warns(ParamDeltaDeprecationWarning, match="fetch_manifest_json"):
            old = c.manifest_json(NAME, "1.0")
        assert old == c.fetch_manifest_json(NAME, "1.0").manifest == Manifest.model_validate_json((published / MANIFEST_FILE).read_bytes())
