"""``RegistryClient``: a connection to one registry, and what can be asked of it.

It composes the pieces the client is made of: ``deltaformat.auth`` (who we are),
``deltaformat.transport`` (HTTP, the retry policy, errors with fields) and
``deltaformat.transfers`` (resumable downloads, chunked uploads, mounts). The library's
verbs (push, pull, search...) are in ``deltaformat.client``.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from deltaformat.artifact import Artifact
from deltaformat.auth import RegistryAuth
from deltaformat.cache import Cache
from deltaformat.environment import offline
from deltaformat.errors import (
    CorruptBlobError,
    FormatError,
    IdentityError,
    NoSpaceError,
    OfflineError,
    ParamDeltaDeprecationWarning,
    RegistryResponseError,
)
from deltaformat.manifest import MAX_MANIFEST_BYTES, Manifest, parse_manifest
from deltaformat.oci import (
    OCI_IMAGE_MANIFEST,
    Descriptor,
    OciManifest,
    check_layers,
    parse_oci_manifest,
    sha256_digest,
)
from deltaformat.progress import progress
from deltaformat.reference import LATEST, Reference, registry_prefix
from deltaformat.transfers import CHUNK_BYTES, Outcome, Progress, Uploader, download_blob
from deltaformat.transport import TIMEOUT, RetryPolicy, Transport

T = TypeVar("T")
TRANSFER_WORKERS = 8
PRESENT_BATCH = 1000  # digests per blobs/_present request (our registry's limit)


@dataclass(frozen=True)
class ManifestJson:
    """A version's manifest.json as a pre-flight fetched it. Its bytes are kept because the download
    that may follow needs them again (the OCI config blob): they are not fetched a second time."""

    content: bytes
    manifest: Manifest
    resolved: tuple[str, bytes] | None = None  # (digest, OCI manifest) where they were read to find it


class RegistryClient:
    """A connection to one registry. Thread-safe: transfers share it from a thread pool."""

    def __init__(self, url: str, token: str | None = None, *, retries: int = 6, backoff: float = 0.5,
                 max_delay: float = 10.0, workers: int = TRANSFER_WORKERS, chunk_bytes: int = CHUNK_BYTES,
                 timeout: httpx.Timeout = TIMEOUT, transport: httpx.BaseTransport | None = None,
                 cache: Cache | None = None, sleep: Callable[[float], None] | None = None,
                 basic: tuple[str, str] | None = None):
        if offline():
            raise OfflineError(f"PARAMDELTA_OFFLINE=1: not contacting {url}")
        self.url = url.rstrip("/")
        self.workers = workers
        self.cache = cache or Cache()
        self.auth = RegistryAuth(self.url, token, basic)
        retry = RetryPolicy(retries, backoff, max_delay) if sleep is None else RetryPolicy(retries, backoff, max_delay, sleep)
        self.transport = Transport(self.url, self.auth, retry, timeout=timeout, transport=transport, connections=workers + 4)
        self.uploader = Uploader(self.transport, self.cache, chunk_bytes)
        self.host = self.transport.host  # the key of the docker config's auths
        self.http = self.transport.http

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.transport.close()

    @property
    def retries(self) -> int:
        return self.transport.retry.retries

    @property
    def max_delay(self) -> float:
        return self.transport.retry.max_delay

    @property
    def chunk_bytes(self) -> int:
        return self.uploader.chunk_bytes

    # -- requests (the names other modules call: signing and referrers use _call and _send) ---------

    def request(self, what: str, method: str, path: str, ok: tuple[int, ...] = (200,), **kw: Any) -> httpx.Response:
        """A whole (non-streamed) request with retries; an answer outside ``ok`` raises RegistryError."""
        return self.transport.call(what, method, path, ok, **kw)

    def _call(self, what: str, method: str, path: str, ok: tuple[int, ...] = (200,), **kw: Any) -> httpx.Response:
        return self.transport.call(what, method, path, ok, **kw)

    def _send(self, method: str, path_or_url: str, *, stream: bool = False, **kw: Any) -> httpx.Response:
        return self.transport.send(method, path_or_url, stream=stream, **kw)

    def _check(self, resp: httpx.Response, what: str, ok: tuple[int, ...]) -> httpx.Response:
        return self.transport.check(resp, what, ok)

    def _retrying(self, what: str, attempt: Callable[[], T]) -> T:
        return self.transport.retry.run(what, attempt)

    # -- reading -----------------------------------------------------------------------

    def resolve(self, name: str, reference: str) -> tuple[str, bytes]:
        """(digest, bytes) of the OCI manifest a tag or digest names, the bytes checked against the digest."""
        content, headers = self.transport.get_small(f"manifest {name}:{reference}", f"/v2/{name}/manifests/{reference}",
                                                    headers={"Accept": OCI_IMAGE_MANIFEST})
        digest = sha256_digest(content)
        claimed = headers.get("docker-content-digest")
        expected = reference if reference.startswith("sha256:") else claimed
        if expected and expected != digest:
            raise CorruptBlobError(f"manifest {name}:{reference} from {self.url}: its bytes have digest {digest}, not {expected}")
        return digest, content

    def fetch_manifest_json(self, name: str, reference: str) -> ManifestJson:
        """A version's manifest.json alone: enough to pre-flight a base without downloading any blob."""
        try:
            content, headers = self.transport.get_small(f"manifest.json of {name}:{reference}",
                                                        f"/api/v1/deltas/{name}/versions/{reference}/manifest")
        except RegistryResponseError as exc:
            if exc.status not in (404, 405):
                raise
            # A registry without the paramdelta API (a stock OCI one), or a version ours lacks:
            # the OCI manifest names manifest.json as its config blob (a missing version fails there).
            return self._manifest_json_from_config(name, reference)
        claimed = headers.get("docker-content-digest")
        if claimed and sha256_digest(content) != claimed:
            raise CorruptBlobError(f"manifest.json of {name}:{reference} does not match its digest {claimed}")
        return ManifestJson(content, parse_manifest(content))

    def manifest_json(self, name: str, reference: str) -> Manifest:
        """Deprecated: ``fetch_manifest_json(name, reference).manifest`` (which also keeps the bytes, so the
        download step need not fetch them again)."""
        warnings.warn("RegistryClient.manifest_json() is deprecated: use fetch_manifest_json(name, reference).manifest",
                      ParamDeltaDeprecationWarning, stacklevel=2)
        return self.fetch_manifest_json(name, reference).manifest

    def _manifest_json_from_config(self, name: str, reference: str) -> ManifestJson:
        """manifest.json as the config blob of the OCI manifest ``reference`` names, size and digest checked."""
        digest, oci_bytes = self.resolve(name, reference)
        config = parse_oci_manifest(oci_bytes).config
        what = f"manifest.json of {name}:{reference}"
        check_config_size(name, digest, config)
        content, _ = self.transport.get_small(what, f"/v2/{name}/blobs/{config.digest}")
        if sha256_digest(content) != config.digest:
            raise CorruptBlobError(f"{what} from {self.url} does not match its digest {config.digest}")
        return ManifestJson(content, parse_manifest(content), (digest, oci_bytes))

    def fetch(self, name: str, digest: str, oci_bytes: bytes, *, quiet: bool = False, expect: Reference | None = None,
              fetched: bytes | None = None) -> Artifact:
        """Download what the cache lacks of the version ``digest`` and return it as an Artifact in the cache.

        manifest.json comes first: the layers are downloaded only once they match it (and,
        with ``expect``, once it names the delta and version asked for), so a registry cannot
        make the client download what the manifest does not describe. ``fetched``: manifest.json's
        bytes as a pre-flight already received them, used where they are the ones ``oci_bytes`` names.
        """
        oci = parse_oci_manifest(oci_bytes)
        check_config_size(name, digest, oci.config)
        self.cache.put_manifest(digest, oci_bytes)
        manifest = parse_manifest(self._config_blob(name, oci.config, fetched))
        check_layers(oci, manifest)
        if expect is not None:
            check_identity(manifest, expect, self.url)
        todo = [d for d in oci.layers if not self.cache.has_blob(d.digest, d.size)]
        check_space(self.cache.root, sum(d.size for d in todo), f"pull {name}")
        with progress(sum(d.size for d in todo), f"pull {name}", quiet, unit="B") as bar:
            self.parallel(lambda d: self.download_blob(name, d, bar.update), todo)
        for layer in [oci.config, *oci.layers]:  # a later push elsewhere on this registry can mount them
            self.cache.add_blob_source(self.url, layer.digest, name)
        return artifact_from_cache(self.cache, oci, f"{registry_prefix(self.url)}/{name}@{digest}")

    def _config_blob(self, name: str, config: Descriptor, fetched: bytes | None) -> bytes:
        """manifest.json, the config blob, in the cache: the pre-flight's bytes where their digest is the
        one the OCI manifest names (not so when a tag moved in between: then it is downloaded)."""
        check_space(self.cache.root, config.size, f"pull {name}")
        if fetched is not None and len(fetched) == config.size and sha256_digest(fetched) == config.digest:
            self.cache.put_blob(config.digest, fetched)
            return fetched
        self.download_blob(name, config)
        content = self.cache.read_blob(config.digest)
        if content is None:
            raise CorruptBlobError(f"manifest.json {config.digest} of {name} vanished from the cache {self.cache.root}")
        return content

    def download_blob(self, name: str, blob: Descriptor, advance: Progress = lambda n: None) -> Path:
        """Download one blob into the cache, resuming a partial download; verify it; return its path."""
        return download_blob(self.transport, self.cache, name, blob, advance)

    def get_json(self, what: str, path: str, params: dict[str, Any]) -> Any:
        """A small JSON answer (bounded like a manifest), parameters that are None left out."""
        query = {k: v for k, v in params.items() if v is not None}
        content, _ = self.transport.get_small(what, str(httpx.URL(path, params=query)) if query else path)
        try:
            return json.loads(content)
        except ValueError:
            raise RegistryResponseError(f"{what}: the registry's answer is not JSON", status=200, code="INVALID_JSON",
                                        detail=content[:200].decode(errors="replace")) from None

    # -- writing ------------------------------------------------------------------------

    def has_blob(self, name: str, digest: str) -> bool:
        resp = self.transport.call(f"HEAD blob {digest}", "HEAD", f"/v2/{name}/blobs/{digest}", ok=(200, 404))
        return resp.status_code == 200

    def blobs_present(self, name: str, digests: list[str]) -> set[str] | None:
        """Which of ``digests`` the registry has in ``name``, in one request per PRESENT_BATCH (the registry's
        blobs/_present extension); None when the registry lacks the extension (ask with has_blob then)."""
        found: set[str] = set()
        for i in range(0, len(digests), PRESENT_BATCH):
            batch = digests[i:i + PRESENT_BATCH]
            resp = self.transport.call(f"blobs of {name}", "POST", f"/v2/{name}/blobs/_present", ok=(200, 404, 405),
                                       json={"digests": batch})
            if resp.status_code != 200:
                return None
            found.update(set(resp.json()["blobs"]) & set(batch))
        return found

    def send_blob(self, name: str, digest: str, size: int, source: Path, advance: Progress = lambda n: None,
                  *, present: bool | None = None) -> Outcome:
        """Put blob ``digest`` in repository ``name``: nothing when it is there (``present``, or a HEAD when
        None), a mount when another repository of this registry has it, else an upload of ``source``."""
        if self.has_blob(name, digest) if present is None else present:
            outcome = Outcome.PRESENT
        else:
            outcome = self.uploader.upload(name, digest, size, source, advance)
        self.cache.add_blob_source(self.url, digest, name)
        return outcome

    def upload_blob(self, name: str, digest: str, size: int, source: Path, advance: Progress = lambda n: None,
                    *, present: bool | None = None) -> bool:
        """``send_blob``, answering True when bytes were sent."""
        return self.send_blob(name, digest, size, source, advance, present=present) is Outcome.SENT

    def put_manifest(self, name: str, tag: str, data: bytes, media_type: str = OCI_IMAGE_MANIFEST) -> str:
        """Publish a manifest under ``tag`` (or its digest); returns its digest."""
        self.transport.call(f"publish {name}:{tag}", "PUT", f"/v2/{name}/manifests/{tag}", ok=(201,), content=data,
                            headers={"Content-Type": media_type})
        return sha256_digest(data)

    # -- helpers -------------------------------------------------------------------------

    def parallel(self, fn: Callable[[Any], T], items: Iterable[Any]) -> list[T]:
        """``fn`` over ``items`` on the transfer threads; the first error cancels what has not started."""
        items = list(items)
        if len(items) <= 1 or self.workers <= 1:
            return [fn(i) for i in items]
        with ThreadPoolExecutor(min(self.workers, len(items)), thread_name_prefix="paramdelta-transfer") as pool:
            futures = [pool.submit(fn, i) for i in items]
            try:
                return [f.result() for f in futures]
            finally:
                for f in futures:
                    f.cancel()


def check_config_size(name: str, digest: str, config: Descriptor) -> None:
    """Refuse, before downloading it, a manifest.json larger than a reader holds."""
    if config.size > MAX_MANIFEST_BYTES:
        raise FormatError(f"{name}@{digest}: its manifest.json has {config.size:,} bytes, more than {MAX_MANIFEST_BYTES:,}")


def check_identity(manifest: Manifest, ref: Reference, url: str) -> None:
    """Refuse a manifest.json that is not the delta ``ref`` asked for.

    Our registry checks name and version at push, but the client cannot know it talks to
    ours: a registry serving another delta's bytes under this name would otherwise be
    applied as if it were the one asked for. ``latest`` names whatever is newest.
    """
    if manifest.name != ref.name:
        raise IdentityError(f"{registry_prefix(url)}/{ref}: its manifest.json names {manifest.name or '(no name)'}, "
                            f"not {ref.name}; refusing what the registry served")
    if ref.tag and ref.tag != LATEST and manifest.version != ref.tag:
        raise IdentityError(f"{registry_prefix(url)}/{ref}: its manifest.json is version {manifest.version or '(none)'}, "
                            f"not {ref.tag}; refusing what the registry served")


def check_space(folder: Path, nbytes: int, what: str) -> None:
    """Fail before downloading when the cache's disk cannot hold what is to be downloaded."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < nbytes:
        raise NoSpaceError(f"not enough space for {what}: it needs {nbytes:,} bytes in {folder}, which has {free:,} free")


def artifact_from_cache(cache: Cache, oci: OciManifest, location: str) -> Artifact:
    """The Artifact an OCI manifest describes, from blobs already in the cache."""
    config = cache.read_blob(oci.config.digest)
    if config is None:
        raise OfflineError(f"{location}: manifest.json ({oci.config.digest}) is not in the cache {cache.root}")
    manifest = parse_manifest(config)
    check_layers(oci, manifest)
    missing = [layer.digest for layer in oci.layers if not cache.has_blob(layer.digest, layer.size)]
    if missing:
        raise OfflineError(f"{location}: {len(missing)} blob(s) not in the cache {cache.root}, first {missing[0]}")
    return Artifact(manifest, config, cache.blob_dir, location)
