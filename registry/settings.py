"""Every PARAMDELTA_* environment variable, in one place.

Server (read here, by ``Settings``; each is also a flag of ``paramdelta serve`` where noted):

    PARAMDELTA_DATA               folder for the embedded default (SQLite file + blob folder)   --data
                                  default: ~/.local/share/paramdelta/registry
    PARAMDELTA_DATABASE_URL       SQLAlchemy URL of the metadata database                         --database-url
                                  default: sqlite:///$PARAMDELTA_DATA/registry.db
    PARAMDELTA_BLOB_STORE         where blobs live: a folder, or URL whose scheme picks a driver   --blob-store
                                  (registry.storage.DRIVERS); default: $PARAMDELTA_DATA/blobs
    PARAMDELTA_HOST / _PORT       address to listen on (default 127.0.0.1:8000)                    --host --port
    PARAMDELTA_PUBLIC_URL         the URL users reach the registry at, for commands shown on pages
                                  and WWW-Authenticate realms; default: taken from each request
    PARAMDELTA_ANONYMOUS_PULL     1 (default): pulls need no token; 0: every request needs one      --no-anonymous-pull
    PARAMDELTA_MAX_MANIFEST_BYTES cap on an OCI manifest and on a delta's manifest.json (16 MiB)
    PARAMDELTA_MAX_BLOB_BYTES     cap on one blob (16 GiB)
    PARAMDELTA_UPLOAD_TTL_SECONDS an upload session idle this long expires and is purged (1 h)
    PARAMDELTA_UPLOAD_MAX_SESSIONS  upload sessions one token may hold open at once (64)
    PARAMDELTA_UPLOAD_MAX_BYTES   bytes one token's open upload sessions may hold, received or being
                                  received (16 GiB: one blob of the largest size PARAMDELTA_MAX_BLOB_BYTES allows)
    PARAMDELTA_UPLOAD_LEASE_SECONDS a request writing to an upload session holds it this long, renewed while
                                  bytes arrive; another request is refused meanwhile (416, Retry-After) (30)
    PARAMDELTA_LOG_LEVEL          debug, info (default), warning
    PARAMDELTA_LOG_FORMAT         text (default) or json: one JSON object per line, with a request log
    PARAMDELTA_METRICS            1 (default): Prometheus metrics at /metrics (needs prometheus-client);
                                  with PARAMDELTA_ANONYMOUS_PULL=0 /metrics, /docs and /openapi.json need a token too
    PARAMDELTA_MANIFEST_CACHE_BYTES  bytes of manifest.json kept in memory for the API's /manifest reads (64 MiB)

Scale-out (PostgreSQL + S3-compatible storage; see registry.storage.s3 and registry.gc):

    PARAMDELTA_S3_ENDPOINT_URL    S3 API endpoint the registry talks to (default: AWS's, by region)
    PARAMDELTA_S3_PUBLIC_ENDPOINT_URL  host that presigned download URLs name, when clients reach the
                                  store at another address than the registry does (default: the endpoint);
                                  keep it a different origin from the registry's: clients send their token
                                  to the registry's origin, and S3 refuses a presigned URL that also has one
    PARAMDELTA_S3_REGION          region to sign for (default: boto3's, AWS_DEFAULT_REGION / AWS_REGION)
    PARAMDELTA_S3_ADDRESSING_STYLE  path, virtual or auto (default: path with an endpoint, else auto)
    PARAMDELTA_S3_REDIRECT        1 (default): blob GETs answer 307 to a presigned URL; 0: stream via the registry
    PARAMDELTA_S3_PRESIGN_SECONDS how long a presigned download URL stays valid (900)
    PARAMDELTA_S3_PART_BYTES      multipart part size for uploads (16 MiB; S3's minimum is 5 MiB)
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE, ...: credentials, the usual boto3 way
    PARAMDELTA_GC_GRACE_SECONDS   `paramdelta gc` keeps blobs and manifests younger than this (24 h)

Client (read by deltaformat.client and deltaformat.cache; listed here so the list is whole):

    PARAMDELTA_REGISTRY           registry URL when a reference names none and --registry is not given
    PARAMDELTA_TOKEN              bearer token; sent only to PARAMDELTA_REGISTRY's or --registry's origin,
                                  never to a host that only appears in a reference
    PARAMDELTA_CACHE              content-addressed download cache (default ~/.cache/paramdelta)
    PARAMDELTA_OFFLINE            1: serve pulls from the cache and make no network call at all
    PARAMDELTA_QUIET              1: no progress bars
    PARAMDELTA_WORKERS            threads for encode/decode (transfers use 8 connections in parallel)
    PARAMDELTA_DEBUG              1: the CLI prints a traceback with an error (one line otherwise)
    PARAMDELTA_KEY_PASSWORD       the password of an encrypted private key given to `paramdelta sign --key`
    DOCKER_CONFIG                 folder of docker's config.json (default ~/.docker): basic credentials per host
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1 << 20


def default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "paramdelta" / "registry"


class Settings(BaseSettings):
    """Server configuration; fields map to PARAMDELTA_<FIELD> (see the module docstring)."""

    model_config = SettingsConfigDict(env_prefix="PARAMDELTA_", extra="ignore")

    data: Path = Field(default_factory=default_data_dir)
    database_url: str | None = None
    blob_store: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    public_url: str | None = None
    anonymous_pull: bool = True
    max_manifest_bytes: int = Field(16 * MiB, ge=4 * MiB, description="OCI asks registries to accept at least 4 MB")
    max_blob_bytes: int = Field(16 << 30, ge=1)
    # An abandoned session holds disk until it expires: an hour idle is plenty for a client to resume.
    upload_ttl_seconds: int = Field(3600, ge=60)
    log_level: str = "info"
    log_format: Literal["text", "json"] = "text"
    metrics: bool = True
    # Scale-out: S3-compatible blob storage (PARAMDELTA_BLOB_STORE=s3://BUCKET[/PREFIX]) and GC.
    s3_endpoint_url: str | None = None
    s3_public_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_addressing_style: Literal["path", "virtual", "auto"] | None = None
    s3_redirect: bool = True
    s3_presign_seconds: int = Field(900, ge=1, le=7 * 24 * 3600)
    s3_part_bytes: int = Field(16 * MiB, ge=5 * MiB, le=5 << 30)
    gc_grace_seconds: int = Field(24 * 3600, ge=0)
    # Trust work (issue #10): the registry's surface.
    manifest_cache_bytes: int = Field(64 * MiB, ge=0)
    # Upload quotas per token (registry.uploads). 64 sessions: the client uploads on 8 threads, so several
    # pushes by one CI token fit. 16 GiB: the largest blob the default max_blob_bytes allows still goes up.
    upload_max_sessions: int = Field(64, ge=1)
    upload_max_bytes: int = Field(16 << 30, ge=1)
    # 30 s: after a replica dies mid-request, the client's resume waits at most this long.
    upload_lease_seconds: int = Field(30, ge=1, le=3600)

    def resolved_database_url(self) -> str:
        """The metadata database URL, defaulting to a SQLite file in the data folder."""
        return self.database_url or f"sqlite:///{self.data / 'registry.db'}"

    def resolved_blob_store(self) -> str:
        """The blob store location, defaulting to a folder in the data folder."""
        return self.blob_store or str(self.data / "blobs")
