"""The registry client: push, pull, search. Resumable, parallel, every digest verified.

    push   ask which blobs the registry has (one request; a HEAD per blob where the
           registry lacks that extension) and upload only the others (in parallel;
           big blobs in chunks, resumed from the registry's offset, even by a later
           run), then PUT the OCI manifest under NS/NAME:VERSION. Any OCI registry: where the
           monolithic POST is answered 202 (distribution) small blobs go by POST + PUT, and
           without blobs/_present it asks with a HEAD per blob.
    pull   resolve the tag to a digest once; then everything by digest: the OCI
           manifest, manifest.json, and the blobs the cache lacks, downloaded in
           parallel into the cache with ranged, resumable requests and checked
           against their digests before they count as cached.

One httpx.Client per RegistryClient with explicit timeouts; one retry policy
(``RegistryClient._retrying``: connection errors, 5xx and 429, with backoff and
Retry-After) that every request goes through, streamed or not; redirects are
followed by hand so the token is only ever sent to the registry's own origin.
A registry that answers 401 with a ``Basic`` challenge gets the user and password stored for its
host[:port] in docker's config.json (``deltaformat.credentials``, written by ``paramdelta login``),
under the same origin rule; a bearer token, when given, is sent instead.

Which registry: the reference's host (``host:port/ns/name:v``), else ``registry=``
(--registry), else PARAMDELTA_REGISTRY. Which token: ``token=`` (--token), else
PARAMDELTA_TOKEN, but only toward PARAMDELTA_REGISTRY or a registry named by
``registry=``: never to a host that merely appears in a reference.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import json
import logging
import os
import random
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from deltaformat._version import __version__
from deltaformat.artifact import BLOB_DIR, DIGEST_FILE, MANIFEST_FILE, SOURCE_FILE, Artifact, blob_path, open_artifact
from deltaformat.cache import Cache, offline
from deltaformat.errors import (
    CorruptBlobError, FormatError, IdentityError, NoSpaceError, OfflineError, RegistryError, from_os_error,
)
from deltaformat.fsutil import atomic_folder, write_file_atomic
from deltaformat.manifest import MAX_MANIFEST_BYTES, Manifest, parse_manifest
from deltaformat.oci import (
    LATEST, OCI_IMAGE_MANIFEST, Descriptor, Reference, architecture_key, build_oci_manifest, check_layers,
    parse_oci_manifest, parse_reference, registry_prefix, registry_url, sha256_digest,
)
from deltaformat.progress import progress

log = logging.getLogger("paramdelta.client")
T = TypeVar("T")

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
MAX_RETRY_AFTER = 60.0  # seconds: a longer Retry-After is capped, not obeyed blindly
TIMEOUT = httpx.Timeout(connect=10.0, read=120.0, write=120.0, pool=300.0)
CHUNK_BYTES = 32 << 20  # blobs up to this size go in one request; bigger ones in chunks of it
READ_BYTES = 1 << 20
TRANSFER_WORKERS = 8
PRESENT_BATCH = 1000  # digests per blobs/_present request (the registry's limit)


@dataclass
class PushResult:
    """What a push did: ``uploaded`` blobs were sent, ``skipped`` ones the registry already had."""

    reference: str
    digest: str
    uploaded: int
    skipped: int
    uploaded_bytes: int
    total_bytes: int


@dataclass
class PullResult:
    """A pulled version: ``pinned`` names it by digest (REGISTRY/NS/NAME@sha256:...), ``artifact`` is the folder written."""

    pinned: str
    artifact: Artifact


class _Retry(Exception):
    """A retryable answer (5xx, 429), with the server's Retry-After in seconds when it gave one."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


@functools.cache
def _ssl_context():
    """One verified TLS context per process: building one loads the CA bundle (~45 ms a client)."""
    return httpx.create_ssl_context()


class RegistryClient:
    """A connection to one registry. Thread-safe: transfers share it from a thread pool."""

    def __init__(self, url: str, token: str | None = None, *, retries: int = 6, backoff: float = 0.5,
                 max_delay: float = 10.0, workers: int = TRANSFER_WORKERS, chunk_bytes: int = CHUNK_BYTES,
                 timeout: httpx.Timeout = TIMEOUT, transport: httpx.BaseTransport | None = None,
                 cache: Cache | None = None, sleep: Callable[[float], None] = time.sleep,
                 basic: tuple[str, str] | None = None):
        if offline():
            raise OfflineError(f"PARAMDELTA_OFFLINE=1: not contacting {url}")
        self.url = url.rstrip("/")
        self.retries, self.backoff, self.max_delay, self.sleep = retries, backoff, max_delay, sleep
        self.workers, self.chunk_bytes = workers, chunk_bytes
        self.cache = cache or Cache()
        self._token = token
        self._origin = _origin(httpx.URL(self.url))
        self.host = httpx.URL(self.url).netloc.decode()  # the key of the docker config's auths
        # basic credentials: ``basic`` (user, password) when given, else looked up on the registry's first
        # Basic challenge; then sent with every request
        self._basic: str | None = _basic_header(*basic) if basic else None
        self._basic_tried = basic is not None
        self._basic_error: RegistryError | None = None
        self._basic_lock = threading.Lock()
        # Whether the registry takes a blob in one POST ?digest= with the body (ours does); a stock
        # distribution registry answers 202 and opens a session instead, so after the first such
        # answer every blob goes straight to POST + PUT (one request fewer, no body sent twice).
        self._monolithic = True
        self.http = httpx.Client(timeout=timeout, transport=transport, follow_redirects=False, verify=_ssl_context(),
                                 limits=httpx.Limits(max_connections=workers + 4, max_keepalive_connections=workers + 4),
                                 headers={"User-Agent": f"paramdelta/{__version__}"})

    def __enter__(self) -> "RegistryClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # -- the one retry policy ------------------------------------------------------------

    def _retrying(self, what: str, attempt: Callable[[], T]) -> T:
        """Run ``attempt`` until it succeeds, retrying connection errors, 5xx and 429 with backoff."""
        for n in range(self.retries + 1):
            try:
                return attempt()
            except _Retry as exc:
                problem, wait = str(exc), exc.retry_after
            except httpx.TransportError as exc:
                problem, wait = f"{what}: {type(exc).__name__}: {exc}", None
            if n == self.retries:
                raise RegistryError(f"{problem} (gave up after {n + 1} attempts)")
            if wait is None:  # exponential backoff with jitter, so parallel transfers do not retry in step
                delay = min(self.max_delay, self.backoff * 2 ** n) * random.uniform(0.5, 1.0)
            else:
                delay = min(wait, MAX_RETRY_AFTER)
            log.info("%s; retrying in %.1fs", problem, delay)
            self.sleep(delay)
        raise AssertionError("unreachable")

    # -- requests ------------------------------------------------------------------------

    def _send(self, method: str, path_or_url: str, *, stream: bool = False, **kw: Any) -> httpx.Response:
        """One request, redirects followed here: the token goes only to the registry's own origin."""
        url = httpx.URL(self.url + path_or_url if path_or_url.startswith("/") else path_or_url)
        headers = dict(kw.pop("headers", None) or {})
        for _ in range(MAX_REDIRECTS + 1):
            resp = self.http.send(self.http.build_request(method, url, headers=headers | self._auth(url), **kw), stream=stream)
            if self._wants_basic(resp, url):  # once: from now on every request carries the credentials
                resp.close()
                resp = self.http.send(self.http.build_request(method, url, headers=headers | self._auth(url), **kw),
                                      stream=stream)
            if resp.status_code not in REDIRECTS or "location" not in resp.headers:
                return resp
            resp.close()
            url = resp.url.join(resp.headers["location"])
            kw.pop("params", None)  # the Location is complete
            if resp.status_code == 303:
                method = "GET"
                kw.pop("content", None)
        raise RegistryError(f"{method} {path_or_url}: more than {MAX_REDIRECTS} redirects")

    def _auth(self, url: httpx.URL) -> dict[str, str]:
        """The one place the Authorization header is chosen: only toward the registry's own origin,
        never a redirect target; the bearer token when there is one, else basic credentials once a
        ``Basic`` challenge asked for them."""
        if _origin(url) != self._origin:
            return {}
        if self._token:
            return {"Authorization": f"Bearer {self._token}"}
        return {"Authorization": self._basic} if self._basic else {}

    def _wants_basic(self, resp: httpx.Response, url: httpx.URL) -> bool:
        """Whether ``resp`` is a first ``Basic`` challenge from the registry itself that stored
        credentials can answer (they are then kept for this client's later requests)."""
        if (resp.status_code != 401 or "authorization" in resp.request.headers or _origin(url) != self._origin
                or not resp.headers.get("www-authenticate", "").lower().startswith("basic")):
            return False
        with self._basic_lock:  # parallel transfers: the file is read once
            if not self._basic_tried:
                from deltaformat.credentials import basic_credentials

                self._basic_tried = True
                try:
                    found = basic_credentials(self.host)
                except RegistryError as exc:  # kept: every parallel transfer then fails with this, not a bare 401
                    self._basic_error = exc
                    raise
                self._basic = _basic_header(*found) if found else None
        if self._basic_error is not None:
            raise RegistryError(str(self._basic_error))
        return self._basic is not None

    def _call(self, what: str, method: str, path: str, ok: tuple[int, ...] = (200,), **kw: Any) -> httpx.Response:
        """A whole (non-streamed) request with retries; an error answer raises RegistryError."""
        return self._retrying(what, lambda: self._check(self._send(method, path, **kw), what, ok))

    def _check(self, resp: httpx.Response, what: str, ok: tuple[int, ...]) -> httpx.Response:
        if resp.status_code in ok:
            return resp
        resp.read()
        resp.close()
        if resp.status_code in RETRY_STATUSES:
            raise _Retry(f"{what}: HTTP {resp.status_code}", _retry_after(resp))
        raise self._error(resp, what)

    def _error(self, resp: httpx.Response, what: str) -> RegistryError:
        try:
            first = resp.json()["errors"][0]
            code, message = first["code"], first["message"]
        except (ValueError, KeyError, IndexError, TypeError):
            code, message = f"HTTP {resp.status_code}", resp.text[:200] or resp.reason_phrase
        hint = ""
        if resp.status_code == 401:
            hint = self._unauthorized_hint(resp)
        err = RegistryError(f"{what}: {code}: {message}{hint}")
        err.status, err.code = resp.status_code, code  # type: ignore[attr-defined]
        return err

    def _unauthorized_hint(self, resp: httpx.Response) -> str:
        if self._token:
            return " (the token was refused)"
        if self._basic:
            return f" (the credentials for {self.host} were refused; run `paramdelta login {self.host}`)"
        if resp.headers.get("www-authenticate", "").lower().startswith("basic"):
            return f" ({self.host} needs a login: run `paramdelta login {self.host}`)"
        return " (pass --token or set PARAMDELTA_TOKEN)"

    # -- reading -----------------------------------------------------------------------

    def resolve(self, name: str, reference: str) -> tuple[str, bytes]:
        """(digest, bytes) of the OCI manifest a tag or digest names, the bytes checked against the digest."""
        content, headers = self._get_small(f"manifest {name}:{reference}", f"/v2/{name}/manifests/{reference}",
                                           headers={"Accept": OCI_IMAGE_MANIFEST})
        digest = sha256_digest(content)
        claimed = headers.get("docker-content-digest")
        expected = reference if reference.startswith("sha256:") else claimed
        if expected and expected != digest:
            raise CorruptBlobError(f"manifest {name}:{reference} from {self.url}: its bytes have digest {digest}, not {expected}")
        return digest, content

    def manifest_json(self, name: str, reference: str) -> Manifest:
        """A version's manifest.json alone: enough to pre-flight a base without downloading any blob."""
        try:
            content, headers = self._get_small(f"manifest.json of {name}:{reference}",
                                               f"/api/v1/deltas/{name}/versions/{reference}/manifest")
        except RegistryError as exc:
            if getattr(exc, "status", None) not in (404, 405):
                raise
            # A registry without the paramdelta API (a stock OCI one), or a version ours lacks:
            # the OCI manifest names manifest.json as its config blob (a missing version fails there).
            return self._manifest_json_from_config(name, reference)
        claimed = headers.get("docker-content-digest")
        if claimed and sha256_digest(content) != claimed:
            raise CorruptBlobError(f"manifest.json of {name}:{reference} does not match its digest {claimed}")
        return parse_manifest(content)

    def _manifest_json_from_config(self, name: str, reference: str) -> Manifest:
        """manifest.json as the config blob of the OCI manifest ``reference`` names, size and digest checked."""
        digest, oci_bytes = self.resolve(name, reference)
        config = parse_oci_manifest(oci_bytes).config
        what = f"manifest.json of {name}:{reference}"
        _check_config_size(name, digest, config)
        content, _ = self._get_small(what, f"/v2/{name}/blobs/{config.digest}")
        if sha256_digest(content) != config.digest:
            raise CorruptBlobError(f"{what} from {self.url} does not match its digest {config.digest}")
        return parse_manifest(content)

    def _get_small(self, what: str, path: str, headers: dict[str, str] | None = None) -> tuple[bytes, httpx.Headers]:
        """GET a manifest's bytes, refusing more than MAX_MANIFEST_BYTES before holding them
        (a registry that is not ours could send a body without end)."""
        def attempt() -> tuple[bytes, httpx.Headers]:
            resp = self._send("GET", path, stream=True, headers=headers)
            try:
                self._check(resp, what, (200,))
                body = bytearray()
                for chunk in resp.iter_bytes():
                    body += chunk
                    if len(body) > MAX_MANIFEST_BYTES:
                        raise FormatError(f"{what} from {self.url}: more than {MAX_MANIFEST_BYTES:,} bytes; refused")
                return bytes(body), resp.headers
            finally:
                resp.close()

        return self._retrying(what, attempt)

    def fetch(self, name: str, digest: str, oci_bytes: bytes, *, quiet: bool = False, expect: Reference | None = None) -> Artifact:
        """Download what the cache lacks of the version ``digest`` and return it as an Artifact in the cache.

        manifest.json comes first: the layers are downloaded only once they match it (and,
        with ``expect``, once it names the delta and version asked for), so a registry cannot
        make the client download what the manifest does not describe.
        """
        oci = parse_oci_manifest(oci_bytes)
        _check_config_size(name, digest, oci.config)
        self.cache.put_manifest(digest, oci_bytes)
        _check_space(self.cache.root, oci.config.size, f"pull {name}")
        self.download_blob(name, oci.config)
        config = self.cache.read_blob(oci.config.digest)
        if config is None:
            raise CorruptBlobError(f"manifest.json {oci.config.digest} of {name} vanished from the cache {self.cache.root}")
        manifest = parse_manifest(config)
        check_layers(oci, manifest)
        if expect is not None:
            check_identity(manifest, expect, self.url)
        todo = [d for d in oci.layers if not self.cache.has_blob(d.digest, d.size)]
        _check_space(self.cache.root, sum(d.size for d in todo), f"pull {name}")
        with progress(sum(d.size for d in todo), f"pull {name}", quiet, unit="B") as bar:
            self.parallel(lambda d: self.download_blob(name, d, bar.update), todo)
        return artifact_from_cache(self.cache, oci, f"{registry_prefix(self.url)}/{name}@{digest}")

    def download_blob(self, name: str, blob: Descriptor, advance: Callable[[int], Any] = lambda n: None) -> Path:
        """Download one blob into the cache, resuming a partial download; verify it; return its path."""
        with self.cache.blob_lock(blob.digest):
            if self.cache.has_blob(blob.digest, blob.size):
                return self.cache.blob_path(blob.digest)
            part = self.cache.part_path(blob.digest)
            state = _PartialDownload.resume(part, blob.size)
            advance(state.offset)
            try:
                self._retrying(f"blob {blob.digest} of {name}", lambda: self._download_attempt(name, blob, state, advance))
            except OSError as exc:  # the cache's disk (a full one: "no space left on device writing <part>")
                raise from_os_error(exc, part) from None
            if state.digest() != blob.digest:
                part.unlink(missing_ok=True)
                raise CorruptBlobError(f"blob {blob.digest} of {name} from {self.url}: the bytes received have digest "
                                       f"{state.digest()}; the registry's copy is corrupt or was tampered with")
            return self.cache.commit_part(blob.digest)

    def _download_attempt(self, name: str, blob: Descriptor, state: "_PartialDownload", advance: Callable[[int], Any]) -> None:
        if state.offset >= blob.size:
            return
        headers = {"Range": f"bytes={state.offset}-"} if state.offset else {}
        resp = self._send("GET", f"/v2/{name}/blobs/{blob.digest}", stream=True, headers=headers)
        try:
            self._check(resp, f"blob {blob.digest} of {name}", (200, 206))
            if resp.status_code == 200 and state.offset:
                advance(-state.offset)
                state.restart()  # the server ignored Range: start over rather than append the wrong bytes
            elif resp.status_code == 206 and not _range_starts_at(resp, state.offset):
                raise _Retry(f"blob {blob.digest}: server answered Range bytes={state.offset}- with "
                             f"{resp.headers.get('content-range')!r}")
            with state.writing() as write:
                for chunk in resp.iter_bytes():  # as the network delivers: whatever arrives before a cut is kept
                    if state.offset + len(chunk) > blob.size:
                        state.restart()
                        raise CorruptBlobError(f"blob {blob.digest} of {name}: the registry sent more than its {blob.size} bytes")
                    write(chunk)
                    advance(len(chunk))
        finally:
            resp.close()
        if state.offset < blob.size:
            raise _Retry(f"blob {blob.digest}: connection ended at byte {state.offset} of {blob.size}")

    # -- writing ------------------------------------------------------------------------

    def has_blob(self, name: str, digest: str) -> bool:
        resp = self._call(f"HEAD blob {digest}", "HEAD", f"/v2/{name}/blobs/{digest}", ok=(200, 404))
        return resp.status_code == 200

    def blobs_present(self, name: str, digests: list[str]) -> set[str] | None:
        """Which of ``digests`` the registry has in ``name``, in one request per PRESENT_BATCH (the registry's
        blobs/_present extension); None when the registry lacks the extension (ask with has_blob then)."""
        found: set[str] = set()
        for i in range(0, len(digests), PRESENT_BATCH):
            batch = digests[i:i + PRESENT_BATCH]
            resp = self._call(f"blobs of {name}", "POST", f"/v2/{name}/blobs/_present", ok=(200, 404, 405),
                              json={"digests": batch})
            if resp.status_code != 200:
                return None
            found.update(set(resp.json()["blobs"]) & set(batch))
        return found

    def upload_blob(self, name: str, digest: str, size: int, source: Path, advance: Callable[[int], Any] = lambda n: None,
                    *, present: bool | None = None) -> bool:
        """Upload ``source`` as blob ``digest`` unless the registry has it; True when bytes were sent.
        ``present``: whether the registry has it, when already asked (blobs_present); None: ask (HEAD)."""
        if self.has_blob(name, digest) if present is None else present:
            return False
        if size <= self.chunk_bytes:
            data = source.read_bytes()
            self._retrying(f"upload blob {digest}", lambda: self._whole_attempt(name, digest, data))
            advance(size)
            return True
        sent = [0]
        self._retrying(f"upload blob {digest}", lambda: self._chunked_attempt(name, digest, size, source, advance, sent))
        self.cache.set_upload(self.url, name, digest, None)
        return True

    def _whole_attempt(self, name: str, digest: str, data: bytes) -> None:
        """One try at uploading a small blob: monolithic POST where the registry takes it, else
        POST (session) + PUT ?digest= with the bytes, as the OCI distribution spec allows either."""
        what = f"upload blob {digest}"
        body = {"content": data, "headers": {"Content-Type": "application/octet-stream"}}
        if self._monolithic:
            resp = self._check(self._send("POST", f"/v2/{name}/blobs/uploads/", params={"digest": digest}, **body),
                               what, (201, 202))
            if resp.status_code == 201:
                return
            self._monolithic = False  # 202: the body was ignored and a session opened; use it
        else:
            resp = self._check(self._send("POST", f"/v2/{name}/blobs/uploads/"), f"start upload of {digest}", (202,))
        location = _upload_location(resp, what)
        self._check(self._send("PUT", _with_digest(location, digest), **body), what, (201,))

    def _chunked_attempt(self, name: str, digest: str, size: int, source: Path, advance: Callable[[int], Any], sent: list[int]) -> None:
        """One try at a chunked upload: continue the recorded session from the registry's offset, or start one."""
        location = self.cache.get_upload(self.url, name, digest)
        offset = self._upload_offset(location) if location else None
        if offset is None:
            resp = self._check(self._send("POST", f"/v2/{name}/blobs/uploads/"), f"start upload of {digest}", (202,))
            location, offset = _upload_location(resp, f"start upload of {digest}"), 0
            self.cache.set_upload(self.url, name, digest, location)
        advance(offset - sent[0])
        sent[0] = offset
        with open(source, "rb") as f:
            while offset < size:
                f.seek(offset)
                data = f.read(min(self.chunk_bytes, size - offset))
                resp = self._send("PATCH", location, content=data, headers={
                    "Content-Type": "application/octet-stream", "Content-Range": f"{offset}-{offset + len(data) - 1}"})
                if resp.status_code == 416:  # the registry stands elsewhere (or another request holds the session):
                    # ask where it stands and go on from there, after the wait it asked for, if any
                    raise _Retry(f"upload of {digest}: registry is not at offset {offset}", _retry_after(resp) or 0)
                self._check(resp, f"upload of {digest}", (202,))
                location = str(resp.url.join(resp.headers.get("location", location)))
                self.cache.set_upload(self.url, name, digest, location)
                offset += len(data)
                advance(len(data))
                sent[0] = offset
        resp = self._send("PUT", _with_digest(location, digest))
        self._check(resp, f"finish upload of {digest}", (201,))

    def _upload_offset(self, location: str) -> int | None:
        """Where a recorded upload session stands, or None when the registry no longer has it."""
        resp = self._send("GET", location)
        if resp.status_code in (404, 400):
            return None
        self._check(resp, "upload status", (204, 200))
        if "upload-offset" in resp.headers:
            return int(resp.headers["upload-offset"])
        end = resp.headers.get("range", "0-0").rpartition("-")[2]
        return int(end) + 1 if end not in ("", "0") else 0

    def put_manifest(self, name: str, tag: str, data: bytes) -> str:
        """Publish an OCI manifest under ``tag``; returns its digest."""
        self._call(f"publish {name}:{tag}", "PUT", f"/v2/{name}/manifests/{tag}", ok=(201,), content=data,
                   headers={"Content-Type": OCI_IMAGE_MANIFEST})
        return sha256_digest(data)

    def get_json(self, what: str, path: str, params: dict[str, Any]) -> dict[str, Any]:
        return self._call(what, "GET", path, params={k: v for k, v in params.items() if v is not None}).json()

    # -- helpers -------------------------------------------------------------------------

    def parallel(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
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


class _PartialDownload:
    """A .part file being filled, with the running sha256 of what it holds."""

    def __init__(self, path: Path):
        self.path, self.offset, self.sha = path, 0, hashlib.sha256()

    @classmethod
    def resume(cls, path: Path, size: int) -> "_PartialDownload":
        """Pick up an existing .part (hashing what it holds), or start an empty one."""
        state = cls(path)
        if path.exists() and path.stat().st_size <= size:
            with open(path, "rb") as f:
                while chunk := f.read(READ_BYTES):
                    state.sha.update(chunk)
                    state.offset += len(chunk)
        else:
            path.write_bytes(b"")
        return state

    @contextlib.contextmanager
    def writing(self) -> Iterator[Callable[[bytes], None]]:
        """A function appending to the .part file, open for one attempt."""
        with open(self.path, "r+b") as f:
            f.seek(self.offset)
            f.truncate()

            def write(data: bytes) -> None:
                f.write(data)
                self.sha.update(data)
                self.offset += len(data)

            yield write

    def restart(self) -> None:
        self.path.write_bytes(b"")
        self.offset, self.sha = 0, hashlib.sha256()

    def digest(self) -> str:
        return "sha256:" + self.sha.hexdigest()


# -- the library's entry points ---------------------------------------------------------


def push(artifact: str | os.PathLike, ref: str, *, registry: str | None = None, token: str | None = None,
         quiet: bool = False, workers: int | None = None, chunk_bytes: int = CHUNK_BYTES) -> PushResult:
    """Publish an artifact folder as ``NS/NAME:VERSION`` (VERSION defaults to the manifest's version)."""
    art = open_artifact(artifact)
    missing = art.missing_blobs()
    if missing:
        raise FormatError(f"{art.location}: blob {missing[0]} is missing ({len(missing)} in all); nothing was pushed")
    parsed = parse_reference(ref)
    tag = parsed.tag or art.manifest.version
    if parsed.digest or not tag:
        raise ValueError(f"{ref!r}: push needs NS/NAME:VERSION (the manifest names no version)")
    oci_bytes = build_oci_manifest(art.manifest, art.manifest_bytes)
    folder = Path(artifact)
    blobs = [(sha256_digest(art.manifest_bytes), len(art.manifest_bytes), folder / MANIFEST_FILE)]
    blobs += [(d.digest, d.size, blob_path(art.blob_dir, d.digest)) for d in parse_oci_manifest(oci_bytes).layers]
    for digest, size, path in blobs[1:]:
        _check_blob_file(art.location, digest, size, path)
    url, tok = _endpoint(parsed, registry, token)
    total = sum(size for _, size, _ in blobs)
    with RegistryClient(url, tok, workers=workers or TRANSFER_WORKERS, chunk_bytes=chunk_bytes) as client, \
            progress(total, f"push {parsed.name}:{tag}", quiet, unit="B") as bar:
        sent = [False] * len(blobs)
        for attempt in (1, 2):
            have = client.blobs_present(parsed.name, list(dict.fromkeys(d for d, _, _ in blobs)))
            now = client.parallel(lambda b: client.upload_blob(parsed.name, *b, advance=bar.update,
                                                               present=None if have is None else b[0] in have), blobs)
            sent = [a or b for a, b in zip(sent, now)]
            try:
                digest = client.put_manifest(parsed.name, tag, oci_bytes)
                break
            except RegistryError as exc:
                # A garbage collection can sweep a blob uploaded moments ago, before the manifest
                # referencing it arrives: upload what is missing once more, then give up.
                if attempt == 2 or getattr(exc, "code", None) != "MANIFEST_BLOB_UNKNOWN":
                    raise
    uploaded = [b for b, s in zip(blobs, sent) if s]
    return PushResult(f"{registry_prefix(url)}/{parsed.name}:{tag}", digest, len(uploaded), len(blobs) - len(uploaded),
                      sum(size for _, size, _ in uploaded), total)


def _check_blob_file(location: str, digest: str, size: int, path: Path) -> None:
    """A blob to upload must be a regular file of the manifest's size: a symlink in a folder
    from elsewhere could otherwise send any file of this machine to the registry."""
    st = path.lstat()
    if not stat.S_ISREG(st.st_mode):
        raise FormatError(f"{location}: blob {digest} is not a regular file (a symbolic link?); nothing was pushed")
    if st.st_size != size:
        raise FormatError(f"{location}: blob {digest} has {st.st_size} bytes, manifest says {size}; nothing was pushed")


def fetch_artifact(ref: str, *, registry: str | None = None, token: str | None = None, quiet: bool = False) -> Artifact:
    """A registry reference as an Artifact whose blobs are in the cache (pulled as needed).

    With PARAMDELTA_OFFLINE=1 it is served from the cache alone, without any network call.
    """
    parsed = parse_reference(ref)
    url, tok = _endpoint(parsed, registry, token)
    cache = Cache()
    if offline():
        art = _from_cache(cache, parsed, url)
        check_identity(art.manifest, parsed, url)
        art.source = _source(parsed, url, art.location.rpartition("@")[2])
        return art
    with RegistryClient(url, tok, cache=cache) as client:
        digest, oci_bytes = client.resolve(parsed.name, parsed.reference)  # the only use of the tag
        art = client.fetch(parsed.name, digest, oci_bytes, quiet=quiet, expect=parsed)
    if not parsed.digest:
        cache.set_ref(url, parsed.name, parsed.tag or LATEST, digest)
    art.source = _source(parsed, url, digest)
    return art


def _check_config_size(name: str, digest: str, config: Descriptor) -> None:
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


def _source(ref: Reference, url: str, digest: str) -> str:
    """The reference as asked for, pinned to the digest it resolved to: REGISTRY/NS/NAME[:TAG]@sha256:..."""
    tag = f":{ref.tag}" if ref.tag else ""
    return f"{registry_prefix(url)}/{ref.name}{tag}@{digest}"


def _check_space(folder: Path, nbytes: int, what: str) -> None:
    """Fail before downloading when the cache's disk cannot hold what is to be downloaded."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < nbytes:
        raise NoSpaceError(f"not enough space for {what}: it needs {nbytes:,} bytes in {folder}, which has {free:,} free")


def pull(ref: str, out: str | os.PathLike, *, registry: str | None = None, token: str | None = None,
         quiet: bool = False, force: bool = False) -> PullResult:
    """Pull a version into the cache and write it out as an artifact folder (blobs hard-linked from the cache)."""
    art = fetch_artifact(ref, registry=registry, token=token, quiet=quiet)
    with atomic_folder(out, force=force) as tmp:
        write_file_atomic(tmp / MANIFEST_FILE, art.manifest_bytes)
        write_file_atomic(tmp / DIGEST_FILE, (sha256_digest(art.manifest_bytes) + "\n").encode())
        record = {"reference": art.source, "pinned": art.location}
        write_file_atomic(tmp / SOURCE_FILE, (json.dumps(record, indent=1) + "\n").encode())
        (tmp / BLOB_DIR).mkdir(parents=True)
        for digest in art.manifest.blob_digests():
            _link_or_copy(blob_path(art.blob_dir, digest), blob_path(tmp / BLOB_DIR, digest))
    return PullResult(art.location, open_artifact(out))


def fetch_manifest(ref: str, *, registry: str | None = None, token: str | None = None) -> Manifest:
    """The manifest.json of a version alone (from the cache when offline), for pre-flight checks."""
    parsed = parse_reference(ref)
    url, tok = _endpoint(parsed, registry, token)
    if offline():
        manifest = _from_cache(Cache(), parsed, url).manifest
    else:
        with RegistryClient(url, tok) as client:
            manifest = client.manifest_json(parsed.name, parsed.reference)
    check_identity(manifest, parsed, url)
    return manifest


def preflight(ref: str, base: str | os.PathLike, *, registry: str | None = None, token: str | None = None) -> Manifest:
    """Check that ``base`` fits a registry version from its manifest.json alone: ``deltaformat.preflight``
    (kept here for callers of the client; it fetches only manifest.json)."""
    from deltaformat.compat import preflight as check

    return check(ref, base, registry=registry, token=token)


def search(text: str | None = None, *, base: str | None = None, architecture: str | None = None,
           namespace: str | None = None, sort: str = "updated", limit: int = 20, cursor: str | None = None,
           registry: str | None = None, token: str | None = None) -> dict[str, Any]:
    """One page of deltas matching the filters: ``{"items": [...], "next_cursor": ...}``."""
    url, tok = _endpoint(None, registry, token)
    with RegistryClient(url, tok) as client, _paramdelta_api(url, "search"):
        return client.get_json("search", "/api/v1/deltas", {"q": text, "base": base, "architecture": architecture,
                                                             "namespace": namespace, "sort": sort, "limit": limit, "cursor": cursor})


def compatible(model: str | os.PathLike, *, registry: str | None = None, token: str | None = None, limit: int = 20) -> dict[str, Any]:
    """Versions that fit a local model or Hub id: same base id, or same tensor names and shapes."""
    from deltaformat.models import open_model

    m = open_model(model)
    shapes = architecture_key((t.name, t.shape) for t in m.tensors.values())
    url, tok = _endpoint(None, registry, token)
    with RegistryClient(url, tok) as client, _paramdelta_api(url, "search --compatible-with"):
        return client.get_json("compatible", "/api/v1/compatible", {"base_id": m.id, "shapes": shapes, "limit": limit})


@contextlib.contextmanager
def _paramdelta_api(url: str, verb: str) -> Iterator[None]:
    """A 404 or 405 from /api/v1 means a registry without paramdelta's API (a stock OCI registry):
    say so in one line instead of passing on the registry's bare "404 page not found"."""
    try:
        yield
    except RegistryError as exc:
        if getattr(exc, "status", None) not in (404, 405):
            raise
        raise RegistryError(f"{verb}: {registry_prefix(url)} has no paramdelta search API (/api/v1 answered "
                            f"HTTP {exc.status}); it is a plain OCI registry: pull, push and apply work, search does not") from None  # type: ignore[attr-defined]


def artifact_from_cache(cache: Cache, oci: Any, location: str) -> Artifact:
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


def _from_cache(cache: Cache, ref: Reference, url: str) -> Artifact:
    digest = ref.digest or cache.get_ref(url, ref.name, ref.tag or LATEST)
    if digest is None:
        raise OfflineError(f"PARAMDELTA_OFFLINE=1 and {ref} was never pulled from {url} into {cache.root}")
    oci_bytes = cache.get_manifest(digest)
    if oci_bytes is None:
        raise OfflineError(f"PARAMDELTA_OFFLINE=1 and the manifest {digest} of {ref} is not in the cache {cache.root}")
    return artifact_from_cache(cache, parse_oci_manifest(oci_bytes), f"{registry_prefix(url)}/{ref.name}@{digest}")


def _endpoint(ref: Reference | None, registry: str | None, token: str | None) -> tuple[str, str | None]:
    """(registry URL, token) for a request, applying the rules in the module docstring."""
    env_url = os.environ.get("PARAMDELTA_REGISTRY")
    url = (ref.registry if ref and ref.registry else None) or registry or env_url
    if not url:
        raise ValueError("no registry: name it in the reference (host:port/ns/name:v), pass --registry, or set PARAMDELTA_REGISTRY")
    url = registry_url(url)
    if token is None:
        trusted = {_origin(httpx.URL(registry_url(u))) for u in (registry, env_url) if u}
        if _origin(httpx.URL(url)) in trusted:
            token = os.environ.get("PARAMDELTA_TOKEN") or None
    return url, token


def _basic_header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def check_login(host: str, user: str, password: str) -> str:
    """Check ``user:password`` against ``GET /v2/`` of ``host`` (``host[:port]`` or a URL); returns
    the auths key (``host[:port]``). A refusal is a one-line RegistryError naming the host."""
    url = registry_url(host)
    with RegistryClient(url, retries=2, basic=(user, password)) as rc:  # these credentials, not the stored ones
        resp = rc._retrying(f"GET {rc.host}/v2/", lambda: rc._send("GET", "/v2/"))
        resp.read()
        if resp.status_code == 401:
            raise RegistryError(f"{rc.host}: the credentials for {user} were refused (HTTP 401 from /v2/)")
        rc._check(resp, f"GET {rc.host}/v2/", (200,))
        return rc.host


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port or {"http": 80, "https": 443}.get(url.scheme)


def _retry_after(resp: httpx.Response) -> float | None:
    """Retry-After as seconds (it may be a number or an HTTP date)."""
    value = resp.headers.get("retry-after")
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    from email.utils import parsedate_to_datetime

    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _upload_location(resp: httpx.Response, what: str) -> str:
    """The absolute URL of the upload session a 202 opened (the spec's Location, often relative)."""
    location = resp.headers.get("location")
    if not location:
        raise RegistryError(f"{what}: the registry answered {resp.status_code} without a Location for the upload session")
    return str(resp.url.join(location))


def _with_digest(location: str, digest: str) -> str:
    """The session URL with ``digest=`` added to its query: httpx's ``params=`` would replace the query,
    dropping the session state a registry keeps there (distribution's ``_state``; without it: 404)."""
    return str(httpx.URL(location).copy_merge_params({"digest": digest}))


def _range_starts_at(resp: httpx.Response, offset: int) -> bool:
    content_range = resp.headers.get("content-range", "")
    return content_range.startswith(f"bytes {offset}-")


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


__all__ = ["RegistryClient", "PushResult", "PullResult", "push", "pull", "fetch_artifact", "fetch_manifest", "preflight", "search", "compatible"]
