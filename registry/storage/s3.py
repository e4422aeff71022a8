"""Blobs in S3-compatible object storage (AWS S3, Ceph RADOS Gateway, MinIO, ...): the scale-out driver.

    PARAMDELTA_BLOB_STORE=s3://BUCKET[/PREFIX]

    PREFIX/blobs/sha256/<2 hex>/<64 hex>    committed blobs (the filesystem driver's layout; sha512 beside them)
    PREFIX/uploads/<upload id>/data         target of the upload's S3 multipart upload
    PREFIX/uploads/<upload id>/tail-<uuid>  bytes received that do not yet fill a part

Endpoint, region and addressing style come from PARAMDELTA_S3_*; credentials the
usual boto3 way (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an instance
role, ...).

Uploads. An upload session is an S3 multipart upload, started when its first full
part is there. S3 wants every part but the last to be at least 5 MiB, while an
OCI client may PATCH any number of bytes; so the bytes that do not fill a part
(PARAMDELTA_S3_PART_BYTES, 16 MiB) at the end of a request are *staged* in a small
object of their own (``tail-<uuid>``, a fresh key per request), and the next
request, on whichever replica, reads them back and sends them on in front of its
own. Everything needed to continue (multipart upload id, each part's number, size
and ETag, the staged tail's key, and the running SHA-256 state) is in
``driver_state``, which the registry saves in its database after each request;
nothing is kept in memory between requests.

* Bytes stored past the recorded state (a request cut off before it was recorded,
  or killed with its process) never count: the next request re-sends the same part
  number, which replaces the stray part, and staged tails have unique keys.
* On commit the parts are completed *with the ETags the database recorded*, so S3
  itself refuses a part that a racing request replaced (InvalidPart): a blob is
  never assembled from bytes other than those hashed.
* The digest of a chunked upload comes from the SHA-256 state carried in
  driver_state (OpenSSL's SHA256_CTX, saved field by field), so finishing an upload
  does not read it back. Where libcrypto cannot be loaded, the upload is assembled
  and read back once to hash it.
* The committed blob is copied server-side from the upload's object to its
  content-addressed key (a multipart copy above 5 GiB) unless the store already
  has that key, then the upload's objects are deleted. Stale sessions are aborted
  by the registry's purge and by ``paramdelta gc`` (multipart uploads and staged
  objects no session refers to).

Downloads: ``redirect_url`` gives a presigned GET, signed for
PARAMDELTA_S3_PUBLIC_ENDPOINT_URL when set (presigned URLs naming an internal host
are a classic failure), or None when PARAMDELTA_S3_REDIRECT=0 so the registry
streams the bytes itself.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import hashlib
import logging
import uuid
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

from deltaformat.digests import PREFIX
from registry.storage.base import READ_CHUNK, BlobStore, Purged, StoredBlob, UploadState, UploadWriter, guard
from registry.storage.errors import BlobNotFound, StorageError, StorageUnavailable, UploadCorrupted, UploadTooLarge

log = logging.getLogger("paramdelta.registry")

HEX_LENGTHS = {"sha256": 64, "sha512": 128}  # the digest algorithms blobs are stored under
MIN_PART_BYTES = 5 << 20
MAX_PARTS = 10_000
COPY_PART_BYTES = 512 << 20  # multipart copy above this (S3's CopyObject stops at 5 GiB)
RETRIES = {"max_attempts": 5, "mode": "standard"}  # botocore's retries of a failed request, before it is an error
_BUSY = ("SlowDown", "ServiceUnavailable", "RequestTimeout", "Throttling", "ThrottlingException")


def _translate(exc: Exception) -> StorageError | None:
    """The storage error for a botocore exception (the driver's boundary, see ``guard``): a store that cannot
    be reached, or answers 5xx or "slow down" once the retries are spent, is unavailable; the rest is a fault."""
    from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    if isinstance(exc, ClientError):
        error, status = exc.response.get("Error", {}), exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if status >= 500 or error.get("Code") in _BUSY:
            return StorageUnavailable(f"S3 is unavailable: {exc}")
        return StorageError(f"S3: {exc}")
    if isinstance(exc, (BotoConnectionError, HTTPClientError)):
        return StorageUnavailable(f"S3 cannot be reached: {exc}")
    if isinstance(exc, BotoCoreError):
        return StorageError(f"S3: {exc}")
    return None


# -- a SHA-256 whose state can be saved in driver_state ----------------------------------


class _ShaCtx(ctypes.Structure):
    # OpenSSL's SHA256_CTX (openssl/sha.h): h[8], Nl, Nh, data[16 words], num, md_len.
    # ``data`` holds raw message bytes, so saving it as bytes is portable across hosts.
    _fields_ = [("h", ctypes.c_uint32 * 8), ("Nl", ctypes.c_uint32), ("Nh", ctypes.c_uint32),
                ("data", ctypes.c_ubyte * 64), ("num", ctypes.c_uint), ("md_len", ctypes.c_uint)]


def _load_libcrypto() -> Any:
    names = [ctypes.util.find_library("crypto"), "libcrypto.so.3", "libcrypto.so.1.1", "libcrypto.dylib"]
    for name in filter(None, names):
        try:
            lib = ctypes.CDLL(name)
            for fn in ("SHA256_Init", "SHA256_Update", "SHA256_Final"):
                getattr(lib, fn).restype = ctypes.c_int
            lib.SHA256_Update.argtypes = [ctypes.POINTER(_ShaCtx), ctypes.c_char_p, ctypes.c_size_t]
            lib.SHA256_Final.argtypes = [ctypes.c_char_p, ctypes.POINTER(_ShaCtx)]
            lib.SHA256_Init.argtypes = [ctypes.POINTER(_ShaCtx)]
            return lib
        except (OSError, AttributeError):
            continue
    return None


_LIBCRYPTO = _load_libcrypto()


class ResumableSha256:
    """SHA-256 over OpenSSL's SHA256_* functions, whose state round-trips through JSON."""

    def __init__(self, ctx: _ShaCtx | None = None):
        if _LIBCRYPTO is None:
            raise RuntimeError("libcrypto is not available")
        if ctx is None:
            ctx = _ShaCtx()
            _LIBCRYPTO.SHA256_Init(ctypes.byref(ctx))
        self._ctx = ctx

    @staticmethod
    def available() -> bool:
        return _LIBCRYPTO is not None

    def update(self, data: bytes) -> None:
        if data:
            _LIBCRYPTO.SHA256_Update(ctypes.byref(self._ctx), bytes(data), len(data))

    def hexdigest(self) -> str:
        ctx = _ShaCtx.from_buffer_copy(bytes(self._ctx))  # Final on a copy: the state stays usable
        out = ctypes.create_string_buffer(32)
        _LIBCRYPTO.SHA256_Final(out, ctypes.byref(ctx))
        return out.raw.hex()

    def dump(self) -> dict[str, Any]:
        c = self._ctx
        return {"h": list(c.h), "nl": c.Nl, "nh": c.Nh, "data": base64.b64encode(bytes(c.data)).decode(), "num": c.num}

    @classmethod
    def load(cls, saved: dict[str, Any]) -> ResumableSha256:
        ctx = _ShaCtx()
        ctx.h[:] = saved["h"]
        ctx.Nl, ctx.Nh, ctx.num, ctx.md_len = saved["nl"], saved["nh"], saved["num"], 32
        ctx.data[:] = base64.b64decode(saved["data"])
        return cls(ctx)


# -- the driver ---------------------------------------------------------------------------


@guard(_translate)
class S3Store(BlobStore):
    """Blobs as objects in one bucket under a prefix; uploads as multipart uploads."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 public_endpoint_url: str | None = None, region: str | None = None,
                 addressing_style: str | None = None, redirect: bool = True, presign_seconds: int = 900,
                 part_bytes: int = 16 << 20, max_pool_connections: int = 64):
        try:
            import boto3
            from botocore.config import Config
        except ImportError as exc:  # pragma: no cover - the scale extra
            raise RuntimeError("the s3:// blob store needs boto3: pip install 'paramdelta[scale]'") from exc
        if part_bytes < MIN_PART_BYTES:
            raise ValueError(f"S3 part size {part_bytes} is under S3's minimum of {MIN_PART_BYTES} bytes")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.redirect, self.presign_seconds, self.part_bytes = redirect, presign_seconds, part_bytes
        style = addressing_style or ("path" if endpoint_url else "auto")
        config = Config(signature_version="s3v4", s3={"addressing_style": style}, max_pool_connections=max_pool_connections,
                        retries=dict(RETRIES), connect_timeout=10, read_timeout=120)
        self._session = boto3.session.Session(region_name=region)  # credentials: the usual boto3 chain
        self.client = self._session.client("s3", endpoint_url=endpoint_url, config=config)
        # Presigning makes no request: a second client only to sign URLs for the host clients reach.
        self.signer = (self._session.client("s3", endpoint_url=public_endpoint_url, config=config)
                       if public_endpoint_url and public_endpoint_url != endpoint_url else self.client)
        self.endpoint_url, self.public_endpoint_url = endpoint_url, public_endpoint_url

    def __repr__(self) -> str:
        return f"S3Store(s3://{self.bucket}/{self.prefix}, endpoint={self.endpoint_url})"

    # -- keys ------------------------------------------------------------------------

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def blob_key(self, digest: str) -> str:
        algorithm, _, hex_ = digest.rpartition(":")
        return self._key("blobs", algorithm or "sha256", hex_[:2], hex_)

    def _upload_prefix(self, upload_id: str) -> str:
        if not upload_id.replace("-", "").isalnum():
            raise ValueError(f"bad upload id {upload_id!r}")
        return self._key("uploads", upload_id) + "/"

    # -- blobs -----------------------------------------------------------------------

    def stat(self, digest: str) -> int | None:
        head = self._head(self.blob_key(digest))
        return None if head is None else head["ContentLength"]

    def open_range(self, digest: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        kw: dict[str, Any] = {}
        if start or end is not None:
            kw["Range"] = f"bytes={start}-{'' if end is None else end}"
        try:  # requested now, so a missing blob fails before streaming starts
            body = self.client.get_object(Bucket=self.bucket, Key=self.blob_key(digest), **kw)["Body"]
        except self.client.exceptions.NoSuchKey:
            raise BlobNotFound(f"blob {digest} is not in {self!r}") from None
        return _stream(body)

    def redirect_url(self, digest: str, size: int) -> str | None:
        if not self.redirect:
            return None
        return self.signer.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self.blob_key(digest)}, ExpiresIn=self.presign_seconds)

    def delete(self, digest: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.blob_key(digest))

    def blobs(self) -> Iterator[StoredBlob]:
        for algorithm, length in HEX_LENGTHS.items():
            for obj in self._objects(self._key("blobs", algorithm) + "/"):
                name = obj["Key"].rsplit("/", 1)[-1]
                if len(name) == length:
                    yield StoredBlob(f"{algorithm}:{name}", obj["Size"], _utc(obj["LastModified"]))

    # -- uploads ---------------------------------------------------------------------

    def begin_upload(self, upload_id: str) -> UploadState:
        self._upload_prefix(upload_id)
        sha = ResumableSha256().dump() if ResumableSha256.available() else None
        return UploadState(0, {"parts": [], "sha": sha})

    def upload_writer(self, upload_id: str, state: UploadState) -> UploadWriter:
        return _S3Writer(self, upload_id, state)

    def upload_digest(self, upload_id: str, state: UploadState, algorithm: str = "sha256") -> str:
        saved = state.driver_state.get("sha")
        if algorithm == "sha256" and saved is not None and state.driver_state.get("sha_bytes", 0) == state.size:
            return PREFIX + ResumableSha256.load(saved).hexdigest()
        # No saved hash state (or sha512, which is not kept as uploads go): assemble the upload, read it back once.
        h = hashlib.new(algorithm)
        key = self._assemble(upload_id, state)
        for chunk in _stream(self.client.get_object(Bucket=self.bucket, Key=key)["Body"]):
            h.update(chunk)
        return f"{algorithm}:{h.hexdigest()}"

    def commit_upload(self, upload_id: str, state: UploadState, digest: str) -> None:
        target = self.blob_key(digest)
        # Never replace a stored blob. This runs under the digest's lock (registry.locks.lock_digest), which
        # every commit of this digest takes, so no other commit can create the key between check and copy.
        # (A conditional copy, If-None-Match: *, would say it to the store too, but Ceph RGW 16 ignores that
        # header on CopyObject and overwrites; it honours it only on PutObject.)
        if self._head(target) is None:
            source = self._assemble(upload_id, state)
            try:
                self._copy(source, target, state.size)
            except self.client.exceptions.ClientError as exc:
                if _code(exc) not in _MISSING:
                    raise
                raise UploadCorrupted(f"upload {upload_id}: its staged bytes are gone from the bucket (purged as stale?); "
                                      "start the upload again") from exc
            stored = self._head(target)
            if stored is None or stored["ContentLength"] != state.size:
                raise StorageError(f"blob {digest}: the store holds {stored and stored['ContentLength']} bytes, not {state.size}")
        # The blob is a copy, a new object: the upload's parts, its multipart upload (aborted here when the
        # blob existed, refused by S3 once completed) and its staged objects can no longer reach it.
        self.abort_upload(upload_id, state)

    def abort_upload(self, upload_id: str, state: UploadState) -> None:
        mpu = state.driver_state.get("mpu")
        if mpu:
            self._abort_multipart(self._upload_prefix(upload_id) + "data", mpu)
        self._delete_prefix(self._upload_prefix(upload_id))

    def purge_uploads(self, live: Mapping[str, UploadState], older_than: datetime) -> Purged:
        """Abort the multipart uploads and delete the staged objects that no live session's recorded state
        names, once last touched before ``older_than``."""
        aborted = self._purge_multipart(live, older_than)
        count, freed = self._purge_staged(live, older_than)
        return Purged(aborted + count, freed)

    def _purge_multipart(self, live: Mapping[str, UploadState], older_than: datetime) -> int:
        keep = {state.driver_state.get("mpu") for state in live.values()}
        count = 0
        paginator = self.client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key("uploads") + "/"):
            for up in page.get("Uploads", []):
                if up["UploadId"] not in keep and _utc(up["Initiated"]) < older_than:
                    self._abort_multipart(up["Key"], up["UploadId"])
                    count += 1
        return count

    def _purge_staged(self, live: Mapping[str, UploadState], older_than: datetime) -> tuple[int, int]:
        """Objects under uploads/ of no live session, and staged tails a live session has moved past."""
        count = freed = 0
        uploads_prefix = self._key("uploads") + "/"
        for obj in self._objects(uploads_prefix):
            upload_id, _, name = obj["Key"][len(uploads_prefix):].partition("/")
            if _utc(obj["LastModified"]) >= older_than:
                continue
            state = live.get(upload_id)
            live_tail = (state.driver_state.get("tail") or {}).get("key") if state is not None else None
            if state is None or (name.startswith("tail-") and obj["Key"] != live_tail):
                self.client.delete_object(Bucket=self.bucket, Key=obj["Key"])
                count, freed = count + 1, freed + obj["Size"]
        return count, freed

    def check(self) -> None:
        self.client.head_bucket(Bucket=self.bucket)

    def close(self) -> None:
        for c in {id(self.client): self.client, id(self.signer): self.signer}.values():
            close = getattr(c, "close", None)
            if close is not None:
                close()

    # -- internals -------------------------------------------------------------------

    def _assemble(self, upload_id: str, state: UploadState) -> str:
        """Make the upload's ``state.size`` bytes one object and return its key."""
        ds, base = state.driver_state, self._upload_prefix(upload_id)
        tail = ds.get("tail")
        if not ds.get("mpu"):
            if tail:
                return tail["key"]
            self.client.put_object(Bucket=self.bucket, Key=base + "data", Body=b"")
            return base + "data"
        key, parts = base + "data", [{"PartNumber": p["n"], "ETag": p["etag"]} for p in ds["parts"]]
        try:
            if tail:
                n = ds["parts"][-1]["n"] + 1 if ds["parts"] else 1
                resp = self.client.upload_part_copy(Bucket=self.bucket, Key=key, UploadId=ds["mpu"], PartNumber=n,
                                                    CopySource={"Bucket": self.bucket, "Key": tail["key"]})
                parts.append({"PartNumber": n, "ETag": resp["CopyPartResult"]["ETag"]})
            self.client.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=ds["mpu"],
                                                  MultipartUpload={"Parts": parts})
        except self.client.exceptions.ClientError as exc:
            code = _code(exc)
            done = self._head(key)
            if code == "NoSuchUpload" and done is not None and done["ContentLength"] == state.size:
                return key  # completed by an earlier attempt that did not get to record it
            if code in ("InvalidPart", "NoSuchUpload"):  # what was recorded is not what S3 has: no retry can help
                raise UploadCorrupted(f"upload {upload_id}: the stored parts no longer match what was recorded "
                                     "(a concurrent request replaced one, or the upload was purged); start the upload again") from exc
            raise
        return key

    def _copy(self, source: str, target: str, size: int) -> None:
        if size <= COPY_PART_BYTES:
            self.client.copy_object(Bucket=self.bucket, Key=target, CopySource={"Bucket": self.bucket, "Key": source})
            return
        from boto3.s3.transfer import TransferConfig

        self.client.copy({"Bucket": self.bucket, "Key": source}, self.bucket, target,
                         Config=TransferConfig(multipart_threshold=COPY_PART_BYTES, multipart_chunksize=COPY_PART_BYTES))

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=key)
        except self.client.exceptions.ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise

    def _objects(self, prefix: str) -> Iterator[dict[str, Any]]:
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            yield from page.get("Contents", [])

    def _delete_prefix(self, prefix: str) -> None:
        keys = [{"Key": o["Key"]} for o in self._objects(prefix)]
        for i in range(0, len(keys), 1000):
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys[i:i + 1000], "Quiet": True})

    def _abort_multipart(self, key: str, mpu: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=mpu)
        except self.client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("NoSuchUpload", "404"):
                raise


@guard(_translate)
class _S3Writer(UploadWriter):
    """One request's bytes: whole parts go to the multipart upload, the rest to a staged tail object."""

    def __init__(self, store: S3Store, upload_id: str, state: UploadState):
        self.store, self.upload_id = store, upload_id
        self.base = store._upload_prefix(upload_id)
        ds = state.driver_state
        self.size, self.mpu = state.size, ds.get("mpu")
        self.parts: list[dict[str, Any]] = [dict(p) for p in ds.get("parts", [])]
        self.tail: dict[str, Any] | None = ds.get("tail")
        saved = ds.get("sha")
        self.sha = ResumableSha256.load(saved) if saved is not None and ds.get("sha_bytes", 0) == state.size else None
        self.buf = bytearray()
        self.changed = False

    def _load_tail(self) -> None:
        """The staged bytes of earlier requests go in front of this one's (read when the first byte comes)."""
        if self.tail:
            s = self.store
            try:
                data = s.client.get_object(Bucket=s.bucket, Key=self.tail["key"])["Body"].read()
            except s.client.exceptions.NoSuchKey:
                raise UploadCorrupted(f"upload {self.upload_id}: its staged bytes are gone from the bucket; "
                                      "start the upload again") from None
            if len(data) != self.tail["size"]:
                raise UploadCorrupted(f"upload {self.upload_id}: staged object has {len(data)} bytes, not {self.tail['size']}")
            self.buf += data

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not self.changed:
            self._load_tail()
        self.changed = True
        if self.sha is not None:
            self.sha.update(data)
        self.buf += data
        self.size += len(data)
        if len(self.buf) >= self.store.part_bytes:
            self._flush_part()

    def _flush_part(self) -> None:
        s, n = self.store, (self.parts[-1]["n"] + 1 if self.parts else 1)
        if n >= MAX_PARTS:  # keep the last number free for the tail
            raise UploadTooLarge(f"upload {self.upload_id}: over {MAX_PARTS} parts of {s.part_bytes} bytes; "
                           "the registry's PARAMDELTA_S3_PART_BYTES is too small for this blob")
        if self.mpu is None:
            self.mpu = s.client.create_multipart_upload(Bucket=s.bucket, Key=self.base + "data")["UploadId"]
        resp = s.client.upload_part(Bucket=s.bucket, Key=self.base + "data", UploadId=self.mpu, PartNumber=n, Body=bytes(self.buf))
        self.parts.append({"n": n, "etag": resp["ETag"], "size": len(self.buf)})
        self.buf.clear()
        self.tail = None

    def close(self) -> UploadState:
        if self.changed:
            if self.buf:  # a fresh key: a racing or cut-off request can never overwrite staged bytes in use
                key = f"{self.base}tail-{uuid.uuid4().hex}"
                self.store.client.put_object(Bucket=self.store.bucket, Key=key, Body=bytes(self.buf))
                self.tail = {"key": key, "size": len(self.buf)}
            else:
                self.tail = None
        state: dict[str, Any] = {"parts": self.parts, "sha": self.sha.dump() if self.sha else None, "sha_bytes": self.size}
        if self.mpu:
            state["mpu"] = self.mpu
        if self.tail:
            state["tail"] = self.tail
        return UploadState(self.size, state)


_MISSING = ("404", "NoSuchKey", "NotFound")


def _code(exc: Any) -> str | None:
    """A botocore ClientError's S3 error code."""
    return exc.response.get("Error", {}).get("Code")


def _stream(body: Any) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(READ_CHUNK)
    finally:
        body.close()


def _utc(t: datetime) -> datetime:
    """S3's times as aware UTC (botocore gives them aware; a naive one is UTC already)."""
    return t.astimezone(timezone.utc) if t.tzinfo else t.replace(tzinfo=timezone.utc)


def parse_location(location: str) -> tuple[str, str]:
    """(bucket, prefix) of ``s3://BUCKET[/PREFIX]``."""
    parts = urlsplit(location)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"PARAMDELTA_BLOB_STORE {location!r}: expected s3://BUCKET[/PREFIX]")
    return parts.netloc, parts.path.strip("/")


def from_location(location: str, settings: Any = None) -> S3Store:
    """The driver factory named in registry.storage.DRIVERS: ``s3://BUCKET[/PREFIX]`` plus PARAMDELTA_S3_*."""
    if settings is None:
        from registry.settings import Settings

        settings = Settings()
    bucket, prefix = parse_location(location)
    return S3Store(bucket, prefix, endpoint_url=settings.s3_endpoint_url, public_endpoint_url=settings.s3_public_endpoint_url,
                   region=settings.s3_region, addressing_style=settings.s3_addressing_style, redirect=settings.s3_redirect,
                   presign_seconds=settings.s3_presign_seconds, part_bytes=settings.s3_part_bytes)
