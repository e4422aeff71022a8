"""The registry client's library calls: push, pull, fetch, search. Resumable, parallel, every digest verified.

    push   ask which blobs the registry has (one request; a HEAD per blob where the
           registry lacks that extension), mount from another repository of the same
           registry what the cache saw there, and upload only the others (in parallel;
           big blobs in chunks, resumed from the registry's offset, even by a later
           run), then PUT the OCI manifest under NS/NAME:VERSION. Any OCI registry: where the
           monolithic POST is answered 202 (distribution) small blobs go by POST + PUT.
    pull   resolve the tag to a digest once; then everything by digest: the OCI
           manifest, manifest.json, and the blobs the cache lacks, downloaded in
           parallel into the cache with ranged, resumable requests and checked
           against their digests before they count as cached.
    search the registry's /api/v1 search; a registry without it (a stock OCI one) is listed
           from its catalog, tags and manifest annotations instead (deltaformat.catalog).

The client is laid out by concern, like httpx: ``deltaformat.reference`` (parsing references),
``deltaformat.auth`` (tokens, docker config.json credentials, the Bearer challenge flow),
``deltaformat.transport`` (HTTP, retries, redirects, errors with fields),
``deltaformat.transfers`` (resumable downloads, chunked uploads, mounts),
``deltaformat.registry_client`` (``RegistryClient``), ``deltaformat.api_models`` (search answers)
and ``deltaformat.environment`` (every environment variable). This module keeps every name it
had: those now defined elsewhere are re-exported.

Which registry: the reference's host (``host:port/ns/name:v``), else ``registry=``
(--registry), else PARAMDELTA_REGISTRY. Which token: ``token=`` (--token), else
PARAMDELTA_TOKEN, but only toward PARAMDELTA_REGISTRY or a registry named by
``registry=``: never to a host that merely appears in a reference.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from deltaformat import environment
from deltaformat.artifact import BLOB_DIR, DIGEST_FILE, MANIFEST_FILE, SOURCE_FILE, Artifact, blob_path, open_artifact
from deltaformat.auth import origin as _auth_origin
from deltaformat.cache import Cache, offline
from deltaformat.errors import FormatError, OfflineError, RegistryError, RegistryResponseError
from deltaformat.fsutil import atomic_folder, write_file_atomic
from deltaformat.manifest import Manifest
from deltaformat.oci import architecture_key, build_oci_manifest, parse_oci_manifest, sha256_digest
from deltaformat.progress import progress
from deltaformat.reference import LATEST, Reference, parse_reference, registry_prefix, registry_url
from deltaformat.registry_client import (
    PRESENT_BATCH,
    TRANSFER_WORKERS,
    ManifestJson,
    RegistryClient,
    artifact_from_cache,
    check_identity,
    check_space,
)
from deltaformat.transfers import CHUNK_BYTES, READ_BYTES, Outcome
from deltaformat.transport import MAX_REDIRECTS, MAX_RETRY_AFTER, RETRY_STATUSES, TIMEOUT, retry_after

if TYPE_CHECKING:  # the search answers' models are built on first use: a pull does not need them
    from deltaformat.api_models import CatalogPage, CompatibleVersion, DeltaSummary, Page

_API_MODELS = ("Page", "DeltaSummary", "CompatibleVersion", "CatalogPage", "TaggedDelta")


def __getattr__(name: str) -> Any:
    if name in _API_MODELS:
        from deltaformat import api_models

        return getattr(api_models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# names this module defined before the split, kept for code that imports them from here
_check_space = check_space
_retry_after = retry_after
REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass
class PushResult:
    """What a push did: ``uploaded`` blobs were sent, ``skipped`` ones the registry already had (``mounted``
    of those: mounted from another repository of the registry, no byte sent)."""

    reference: str
    digest: str
    uploaded: int
    skipped: int
    uploaded_bytes: int
    total_bytes: int
    mounted: int = 0


@dataclass
class PullResult:
    """A pulled version: ``pinned`` names it by digest (REGISTRY/NS/NAME@sha256:...), ``artifact`` is the folder written."""

    pinned: str
    artifact: Artifact


def push(artifact: str | os.PathLike[str], ref: str, *, registry: str | None = None, token: str | None = None,
         quiet: bool = False, workers: int | None = None, chunk_bytes: int = CHUNK_BYTES,
         credentials: tuple[str, str] | None = None) -> PushResult:
    """Publish an artifact folder as ``NS/NAME:VERSION`` (VERSION defaults to the manifest's version).
    ``credentials`` (user, password): for this call, instead of those docker's config.json keeps."""
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
    with RegistryClient(url, tok, workers=workers or TRANSFER_WORKERS, chunk_bytes=chunk_bytes, basic=credentials) as client, \
            progress(total, f"push {parsed.name}:{tag}", quiet, unit="B") as bar:
        outcomes = [Outcome.PRESENT] * len(blobs)
        for attempt in (1, 2):
            have = client.blobs_present(parsed.name, list(dict.fromkeys(d for d, _, _ in blobs)))
            # B023: the lambda runs, and is done, within this attempt's parallel(): it reads this attempt's `have`
            now = client.parallel(lambda b: client.send_blob(parsed.name, b[0], b[1], b[2], advance=bar.update,
                                                             present=None if have is None else b[0] in have), blobs)  # noqa: B023
            outcomes = [o if o is not Outcome.PRESENT else n for o, n in zip(outcomes, now)]
            try:
                digest = client.put_manifest(parsed.name, tag, oci_bytes)
                break
            except RegistryError as exc:
                # A garbage collection can sweep a blob uploaded moments ago, before the manifest
                # referencing it arrives: upload what is missing once more, then give up.
                if attempt == 2 or exc.code != "MANIFEST_BLOB_UNKNOWN":
                    raise
    uploaded = [b for b, o in zip(blobs, outcomes) if o is Outcome.SENT]
    return PushResult(f"{registry_prefix(url)}/{parsed.name}:{tag}", digest, len(uploaded), len(blobs) - len(uploaded),
                      sum(size for _, size, _ in uploaded), total, outcomes.count(Outcome.MOUNTED))


def _check_blob_file(location: str, digest: str, size: int, path: Path) -> None:
    """A blob to upload must be a regular file of the manifest's size: a symlink in a folder
    from elsewhere could otherwise send any file of this machine to the registry."""
    st = path.lstat()
    if not stat.S_ISREG(st.st_mode):
        raise FormatError(f"{location}: blob {digest} is not a regular file (a symbolic link?); nothing was pushed")
    if st.st_size != size:
        raise FormatError(f"{location}: blob {digest} has {st.st_size} bytes, manifest says {size}; nothing was pushed")


def fetch_artifact(ref: str, *, registry: str | None = None, token: str | None = None, quiet: bool = False,
                   credentials: tuple[str, str] | None = None, preflighted: ManifestJson | None = None) -> Artifact:
    """A registry reference as an Artifact whose blobs are in the cache (pulled as needed).

    ``preflighted``: what ``fetch_manifest_json`` answered for ``ref``, so that manifest.json (and the
    OCI manifest, where that was read to find it) is not fetched again. With PARAMDELTA_OFFLINE=1 it
    is served from the cache alone, without any network call.
    """
    parsed = parse_reference(ref)
    url, tok = _endpoint(parsed, registry, token)
    cache = Cache()
    if offline():
        art = _from_cache(cache, parsed, url)
        check_identity(art.manifest, parsed, url)
        art.source = _source(parsed, url, art.location.rpartition("@")[2])
        return art
    with RegistryClient(url, tok, cache=cache, basic=credentials) as client:
        resolved = preflighted.resolved if preflighted else None
        digest, oci_bytes = resolved or client.resolve(parsed.name, parsed.reference)  # the only use of the tag
        art = client.fetch(parsed.name, digest, oci_bytes, quiet=quiet, expect=parsed,
                           fetched=preflighted.content if preflighted else None)
    if not parsed.digest:
        cache.set_ref(url, parsed.name, parsed.tag or LATEST, digest)
    art.source = _source(parsed, url, digest)
    return art


def _source(ref: Reference, url: str, digest: str) -> str:
    """The reference as asked for, pinned to the digest it resolved to: REGISTRY/NS/NAME[:TAG]@sha256:..."""
    tag = f":{ref.tag}" if ref.tag else ""
    return f"{registry_prefix(url)}/{ref.name}{tag}@{digest}"


def pull(ref: str, out: str | os.PathLike[str], *, registry: str | None = None, token: str | None = None,
         quiet: bool = False, force: bool = False, credentials: tuple[str, str] | None = None) -> PullResult:
    """Pull a version into the cache and write it out as an artifact folder (blobs hard-linked from the cache)."""
    art = fetch_artifact(ref, registry=registry, token=token, quiet=quiet, credentials=credentials)
    with atomic_folder(out, force=force) as tmp:
        write_file_atomic(tmp / MANIFEST_FILE, art.manifest_bytes)
        write_file_atomic(tmp / DIGEST_FILE, (sha256_digest(art.manifest_bytes) + "\n").encode())
        record = {"reference": art.source, "pinned": art.location}
        write_file_atomic(tmp / SOURCE_FILE, (json.dumps(record, indent=1) + "\n").encode())
        (tmp / BLOB_DIR).mkdir(parents=True)
        for digest in art.manifest.blob_digests():
            _link_or_copy(blob_path(art.blob_dir, digest), blob_path(tmp / BLOB_DIR, digest))
    return PullResult(art.location, open_artifact(out))


def fetch_manifest(ref: str, *, registry: str | None = None, token: str | None = None,
                   credentials: tuple[str, str] | None = None) -> Manifest:
    """The manifest.json of a version alone (from the cache when offline), for pre-flight checks."""
    return fetch_manifest_json(ref, registry=registry, token=token, credentials=credentials).manifest


def fetch_manifest_json(ref: str, *, registry: str | None = None, token: str | None = None,
                        credentials: tuple[str, str] | None = None) -> ManifestJson:
    """``fetch_manifest`` with the bytes it fetched, which ``fetch_artifact(preflighted=)`` then uses
    instead of downloading manifest.json a second time."""
    parsed = parse_reference(ref)
    url, tok = _endpoint(parsed, registry, token)
    if offline():
        art = _from_cache(Cache(), parsed, url)
        fetched = ManifestJson(art.manifest_bytes, art.manifest)
    else:
        with RegistryClient(url, tok, basic=credentials) as client:
            fetched = client.fetch_manifest_json(parsed.name, parsed.reference)
    check_identity(fetched.manifest, parsed, url)
    return fetched


def preflight(ref: str, base: str | os.PathLike[str], *, registry: str | None = None, token: str | None = None) -> Manifest:
    """Check that ``base`` fits a registry version from its manifest.json alone: ``deltaformat.preflight``
    (kept here for callers of the client; it fetches only manifest.json)."""
    from deltaformat.compat import preflight as check

    return check(ref, base, registry=registry, token=token)


def search(text: str | None = None, *, base: str | None = None, architecture: str | None = None,
           namespace: str | None = None, sort: str = "updated", limit: int = 20, cursor: str | None = None,
           registry: str | None = None, token: str | None = None,
           credentials: tuple[str, str] | None = None) -> Page[DeltaSummary] | CatalogPage:
    """One page of deltas matching the filters (``.items``, ``.next_cursor``).

    A registry without paramdelta's search API (a stock OCI registry) is listed from its
    catalog, tags and manifest annotations instead: a ``CatalogPage`` whose ``notice`` says so.
    """
    from deltaformat.api_models import DeltaSummary, Page

    url, tok = _endpoint(None, registry, token)
    query = {"q": text, "base": base, "architecture": architecture, "namespace": namespace, "sort": sort,
             "limit": limit, "cursor": cursor}
    with RegistryClient(url, tok, basic=credentials) as client:
        try:
            return Page[DeltaSummary].model_validate(client.get_json("search", "/api/v1/deltas", query))
        except RegistryResponseError as exc:
            if exc.status not in (404, 405):
                raise
        from deltaformat.catalog import list_deltas

        return list_deltas(client, text=text, base=base, architecture=architecture, namespace=namespace, sort=sort,
                           limit=limit, cursor=cursor)


def compatible(model: str | os.PathLike[str], *, registry: str | None = None, token: str | None = None,
               limit: int = 20) -> Page[CompatibleVersion]:
    """Versions that fit a local model or Hub id: same base id, or same tensor names and shapes."""
    from deltaformat.api_models import CompatibleVersion, Page
    from deltaformat.models import open_model

    m = open_model(model)
    shapes = architecture_key((t.name, t.shape) for t in m.tensors.values())
    url, tok = _endpoint(None, registry, token)
    with RegistryClient(url, tok) as client:
        try:
            answer = client.get_json("compatible", "/api/v1/compatible", {"base_id": m.id, "shapes": shapes, "limit": limit})
        except RegistryResponseError as exc:
            if exc.status not in (404, 405):
                raise
            # say so in one line instead of passing on the registry's bare "404 page not found"
            raise RegistryError(f"search --compatible-with: {registry_prefix(url)} has no paramdelta search API "
                                f"(/api/v1 answered HTTP {exc.status}); it is a plain OCI registry: pull, push, apply "
                                f"and plain search work, --compatible-with does not") from None
    return Page[CompatibleVersion].model_validate(answer)


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
    env_url = environment.registry()
    url = (ref.registry if ref and ref.registry else None) or registry or env_url
    if not url:
        raise ValueError("no registry: name it in the reference (host:port/ns/name:v), pass --registry, or set PARAMDELTA_REGISTRY")
    url = registry_url(url)
    if token is None:
        trusted = {_auth_origin(httpx.URL(registry_url(u))) for u in (registry, env_url) if u}
        if _auth_origin(httpx.URL(url)) in trusted:
            token = environment.token()
    return url, token


def check_login(host: str, user: str, password: str) -> str:
    """Check ``user:password`` against ``GET /v2/`` of ``host`` (``host[:port]`` or a URL); returns
    the auths key (``host[:port]``). A refusal is a one-line RegistryError naming the host.
    A registry with token auth is asked for a token with these credentials, as docker login does."""
    url = registry_url(host)
    with RegistryClient(url, retries=2, basic=(user, password)) as rc:  # these credentials, not the stored ones
        what = f"GET {rc.host}/v2/"
        resp = rc.transport.retry.run(what, lambda: rc.transport.send("GET", "/v2/"))
        if resp.status_code == 401:
            raise RegistryError(f"{rc.host}: the credentials for {user} were refused (HTTP 401 from /v2/)")
        rc.transport.check(resp, what, (200,))
        return rc.host


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


__all__ = [
    "RegistryClient", "PushResult", "PullResult", "push", "pull", "fetch_artifact", "fetch_manifest",
    "fetch_manifest_json", "ManifestJson", "preflight",
    "search", "compatible", "check_login", "check_identity", "artifact_from_cache",
    # re-exported from the modules the client was split into
    "CHUNK_BYTES", "READ_BYTES", "TRANSFER_WORKERS", "PRESENT_BATCH", "TIMEOUT", "RETRY_STATUSES", "MAX_REDIRECTS",
    "MAX_RETRY_AFTER", "REDIRECTS", "sha256_digest", "Page", "DeltaSummary", "CompatibleVersion", "CatalogPage",
]
