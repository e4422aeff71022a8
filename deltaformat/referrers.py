"""OCI referrers: artifacts that refer to a manifest (their ``subject``), pushed and listed.

    push   the artifact's blobs (an empty config and one layer), then its manifest by digest.
           A registry with the referrers API indexes it itself and says so with an ``OCI-Subject``
           header; one without (distribution 2.8, Debian's docker-registry) does not, so the client
           keeps the referrers tag schema itself: an image index under the tag ``sha256-<hex>`` of
           the subject lists its referrers (OCI distribution spec 1.1, "Referrers Tag Schema").
    list   ``GET /v2/<name>/referrers/<digest>`` (following ``Link`` pages); where the registry
           answers 404 (no such API), the tag schema's index; neither: no referrers.

Every document read here is bounded in size before it is held, and every descriptor is
checked by the pydantic models of deltaformat.oci: a registry is not trusted to send sane JSON.
Updating the tag schema's index is read-modify-write: two clients signing the same manifest at
the same instant on a registry without the API can lose one entry (the spec accepts this).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from deltaformat.errors import CorruptBlobError, FormatError, RegistryError, invalid_field
from deltaformat.manifest import MAX_MANIFEST_BYTES
from deltaformat.oci import OCI_IMAGE_MANIFEST, Descriptor, OciManifest, sha256_digest
from deltaformat.registry_client import RegistryClient

OCI_IMAGE_INDEX = "application/vnd.oci.image.index.v1+json"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_BLOB = b"{}"  # the OCI empty descriptor's content: an artifact's config when it has none
CREATED_ANNOTATION = "org.opencontainers.image.created"
MAX_PAGES = 64  # referrers API pages followed before giving up on a registry that pages forever


class OciIndex(BaseModel):
    """An OCI image index, as the referrers API and the referrers tag schema serve it."""

    model_config = ConfigDict(extra="allow")

    schemaVersion: Literal[2]
    mediaType: str | None = None
    manifests: list[dict[str, Any]]  # checked one by one (descriptors): one odd entry does not hide the others

    def descriptors(self) -> list[Descriptor]:
        """The entries that are descriptors this client reads (sha256); others (sha512, malformed) are left out."""
        found = []
        for entry in self.manifests:
            try:
                found.append(Descriptor.model_validate(entry))
            except ValidationError:
                continue
        return found


def tag_schema_tag(digest: str) -> str:
    """The referrers tag schema's tag for ``digest``: ``sha256:<hex>`` -> ``sha256-<hex>``."""
    algorithm, _, hex_ = digest.partition(":")
    return f"{algorithm}-{hex_}"


def push_referrer(client: RegistryClient, name: str, subject: Descriptor, artifact_type: str, content: bytes,
                  annotations: dict[str, str]) -> str:
    """Push ``content`` as a one-layer artifact of ``artifact_type`` referring to ``subject``; returns its digest."""
    annotations = {CREATED_ANNOTATION: datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), **annotations}
    layer = Descriptor(mediaType=artifact_type, digest=sha256_digest(content), size=len(content))
    config = Descriptor(mediaType=EMPTY_MEDIA_TYPE, digest=sha256_digest(EMPTY_BLOB), size=len(EMPTY_BLOB))
    doc = {
        "schemaVersion": 2, "mediaType": OCI_IMAGE_MANIFEST, "artifactType": artifact_type,
        "config": config.model_dump(exclude_none=True), "layers": [layer.model_dump(exclude_none=True)],
        "subject": {"mediaType": subject.mediaType, "digest": subject.digest, "size": subject.size},
        "annotations": annotations,
    }
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    digest = sha256_digest(data)
    for blob in (EMPTY_BLOB, content):
        _put_blob(client, name, blob)
    resp = client.request(f"push referrer {digest} of {name}@{subject.digest}", "PUT", f"/v2/{name}/manifests/{digest}",
                        ok=(201,), content=data, headers={"Content-Type": OCI_IMAGE_MANIFEST})
    if "oci-subject" not in resp.headers:  # the registry did not index it: keep the tag schema's index
        entry = Descriptor(mediaType=OCI_IMAGE_MANIFEST, digest=digest, size=len(data), artifactType=artifact_type,
                           annotations=annotations)
        _add_to_tag_index(client, name, subject.digest, entry)
    return digest


def list_referrers(client: RegistryClient, name: str, digest: str, artifact_type: str | None = None) -> list[Descriptor]:
    """The referrers of ``name@digest`` (only those of ``artifact_type``, or of none stated, when given),
    through the referrers API where the registry has it, else the referrers tag schema."""
    found = _from_api(client, name, digest, artifact_type)
    if found is None:
        index = _get_index(client, name, tag_schema_tag(digest))
        found = index.descriptors() if index is not None else []
    # filtered here too: a registry may ignore the artifactType filter (it then omits OCI-Filters-Applied).
    # A descriptor without artifactType is kept: a tool that rewrote the tag schema's index may have dropped
    # it; the caller reads the referrer's manifest anyway.
    return [d for d in found if artifact_type is None or d.artifactType in (artifact_type, None)]


def get_manifest(client: RegistryClient, name: str, digest: str) -> OciManifest:
    """Any OCI image manifest by digest (a referrer's: its config need not be a delta's), bytes checked."""
    data = _get_bounded(client, f"manifest {name}@{digest}", f"/v2/{name}/manifests/{digest}", MAX_MANIFEST_BYTES,
                        {"Accept": OCI_IMAGE_MANIFEST})
    if sha256_digest(data) != digest:
        raise CorruptBlobError(f"manifest {name}@{digest} from {client.url}: its bytes have digest {sha256_digest(data)}")
    try:
        return OciManifest.model_validate_json(data)
    except ValidationError as exc:
        raise FormatError(f"manifest {name}@{digest}: not an OCI image manifest ({exc.errors()[0]['msg']})") from None


def get_blob(client: RegistryClient, name: str, blob: Descriptor, limit: int) -> bytes:
    """A small blob's bytes, its size checked against ``limit`` before and its digest after downloading it."""
    what = f"blob {blob.digest} of {name}"
    if blob.size > limit:
        raise FormatError(f"{what}: {blob.size:,} bytes, more than the {limit:,} a reader holds")
    data = _get_bounded(client, what, f"/v2/{name}/blobs/{blob.digest}", blob.size)
    if sha256_digest(data) != blob.digest:
        raise CorruptBlobError(f"{what} from {client.url}: its bytes have digest {sha256_digest(data)}")
    return data


# -- the referrers API and the tag schema -----------------------------------------------------


def _from_api(client: RegistryClient, name: str, digest: str, artifact_type: str | None) -> list[Descriptor] | None:
    """The referrers API's listing, every page; None when the registry has no referrers API (404)."""
    path: str | None = f"/v2/{name}/referrers/{digest}"
    params = {"artifactType": artifact_type} if artifact_type else None
    found: list[Descriptor] = []
    for _ in range(MAX_PAGES):
        if path is None:
            return found
        resp = client.request(f"referrers of {name}@{digest}", "GET", path, ok=(200, 404), params=params,
                            headers={"Accept": OCI_IMAGE_INDEX}, stream=True)
        if resp.status_code == 404:
            resp.close()
            if found:  # a later page vanished: what the earlier pages said is incomplete
                raise RegistryError(f"referrers of {name}@{digest}: page {path} answered 404")
            return None
        body, next_link = _read_bounded(resp, f"referrers of {name}@{digest}", MAX_MANIFEST_BYTES), resp.links.get("next")
        found += _parse_index(body, f"referrers of {name}@{digest}").descriptors()
        path, params = (str(resp.url.join(next_link["url"])) if next_link else None), None
    raise RegistryError(f"referrers of {name}@{digest}: more than {MAX_PAGES} pages")


def _get_index(client: RegistryClient, name: str, tag: str) -> OciIndex | None:
    """The image index under ``tag``, or None when there is no such tag."""
    resp = client.request(f"referrers index {name}:{tag}", "GET", f"/v2/{name}/manifests/{tag}", ok=(200, 404),
                        headers={"Accept": OCI_IMAGE_INDEX}, stream=True)
    if resp.status_code == 404:
        resp.close()
        return None
    return _parse_index(_read_bounded(resp, f"referrers index {name}:{tag}", MAX_MANIFEST_BYTES), f"{name}:{tag}")


def _add_to_tag_index(client: RegistryClient, name: str, subject: str, entry: Descriptor) -> None:
    tag = tag_schema_tag(subject)
    index = _get_index(client, name, tag) or OciIndex(schemaVersion=2, mediaType=OCI_IMAGE_INDEX, manifests=[])
    if any(d.digest == entry.digest for d in index.descriptors()):
        return
    index.manifests.append(entry.model_dump(exclude_none=True))
    data = index.model_dump_json(exclude_none=True).encode()
    client.request(f"update referrers index {name}:{tag}", "PUT", f"/v2/{name}/manifests/{tag}", ok=(201,), content=data,
                 headers={"Content-Type": OCI_IMAGE_INDEX})


def _parse_index(data: bytes, what: str) -> OciIndex:
    try:
        return OciIndex.model_validate_json(data)
    except ValidationError as exc:
        raise FormatError(f"{what}: not an OCI image index ({invalid_field(exc)})") from None


# -- bounded requests ------------------------------------------------------------------------


def _put_blob(client: RegistryClient, name: str, data: bytes) -> None:
    """Upload a small blob unless the registry has it: POST opens a session, PUT ?digest= closes it with
    the bytes (the flow every registry takes, ours and distribution alike)."""
    digest = sha256_digest(data)
    if client.request(f"HEAD blob {digest}", "HEAD", f"/v2/{name}/blobs/{digest}", ok=(200, 404)).status_code == 200:
        return
    resp = client.request(f"start upload of {digest}", "POST", f"/v2/{name}/blobs/uploads/", ok=(202,))
    location = resp.headers.get("location")
    if not location:
        raise RegistryError(f"upload of {digest} to {name}: the registry answered 202 without a Location")
    # digest= is added to the session URL's own query: distribution keeps its session state there
    url = httpx.URL(str(resp.url.join(location))).copy_merge_params({"digest": digest})
    client.request(f"upload blob {digest}", "PUT", str(url), ok=(201,), content=data,
                 headers={"Content-Type": "application/octet-stream"})


def _get_bounded(client: RegistryClient, what: str, path: str, limit: int, headers: dict[str, str] | None = None) -> bytes:
    resp = client.request(what, "GET", path, headers=headers, stream=True)
    return _read_bounded(resp, what, limit)


def _read_bounded(resp: httpx.Response, what: str, limit: int) -> bytes:
    """A streamed body, refused past ``limit`` bytes before more is held (a hostile registry may send no end)."""
    try:
        body = bytearray()
        for chunk in resp.iter_bytes():
            body += chunk
            if len(body) > limit:
                raise FormatError(f"{what}: the registry sent more than {limit:,} bytes; refused")
        return bytes(body)
    finally:
        resp.close()


__all__ = ["OciIndex", "push_referrer", "list_referrers", "get_manifest", "get_blob", "tag_schema_tag"]
