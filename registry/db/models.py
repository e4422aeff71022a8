"""SQLAlchemy 2 models: the registry's metadata (blob bytes live in the blob store).

Portable across SQLite and PostgreSQL: no dialect-specific types, naive UTC
timestamps, digests as text. The schema is created and upgraded by Alembic
(registry/migrations); tests check the migrations match these models.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, LargeBinary, MetaData, String, Text, UniqueConstraint, true
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

DIGEST = String(135)  # "sha256:" + 64 hex, or "sha512:" + 128 hex
NAME = String(255)


def utcnow() -> datetime:
    """Naive UTC: stored the same way by SQLite and PostgreSQL."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def as_stored(t: datetime) -> datetime:
    """``t`` as the database keeps times: naive UTC (a naive ``t`` is taken to be UTC already)."""
    return t.astimezone(timezone.utc).replace(tzinfo=None) if t.tzinfo else t


class Base(DeclarativeBase):
    # Named constraints, so Alembic can alter them on every backend.
    metadata = MetaData(naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    })


class Repository(Base):
    """A delta: NS/NAME, the OCI repository its versions are pushed to."""

    __tablename__ = "repositories"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(NAME, unique=True)
    namespace: Mapped[str] = mapped_column(NAME, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)


class Blob(Base):
    """A blob committed to the store (the store holds the bytes, keyed by digest)."""

    __tablename__ = "blobs"
    digest: Mapped[str] = mapped_column(DIGEST, primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class RepositoryBlob(Base):
    """A blob uploaded to (or mounted into) a repository: only linked blobs are served from it."""

    __tablename__ = "repository_blobs"
    repository_id: Mapped[int] = mapped_column(ForeignKey("repositories.id", ondelete="CASCADE"), primary_key=True)
    digest: Mapped[str] = mapped_column(ForeignKey("blobs.digest"), primary_key=True, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Manifest(Base):
    """One pushed OCI manifest or index, byte-exact. A paramdelta delta (``is_delta``) also has the delta metadata
    that search reads; any other content (images, indexes, signatures and other artifacts) has those columns null."""

    __tablename__ = "manifests"
    __table_args__ = (UniqueConstraint("repository_id", "digest", name="uq_manifests_repository_digest"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    repository_id: Mapped[int] = mapped_column(ForeignKey("repositories.id", ondelete="CASCADE"), index=True)
    digest: Mapped[str] = mapped_column(DIGEST, index=True)
    media_type: Mapped[str] = mapped_column(NAME)
    size: Mapped[int] = mapped_column(BigInteger)
    # Deferred, like summary: loaded only where used, not by every list and search row (up to 16 MiB each).
    content: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    config_digest: Mapped[str | None] = mapped_column(DIGEST, nullable=True)  # None for an index
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    pushed_by: Mapped[str | None] = mapped_column(NAME, nullable=True)
    # Only deltas are listed by search, pages and "deltas for this base"; other content is stored and served.
    is_delta: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # What the referrers API lists: the manifest's artifactType (an image's config.mediaType when it has none),
    # and the manifest its ``subject`` names (by digest; that manifest need not exist).
    artifact_type: Mapped[str | None] = mapped_column(NAME, nullable=True)
    subject_digest: Mapped[str | None] = mapped_column(DIGEST, nullable=True, index=True)
    # The index: copied from manifest.json at push time (null for content that is not a delta).
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    license: Mapped[str | None] = mapped_column(String(200), nullable=True)
    base_id: Mapped[str | None] = mapped_column(NAME, index=True, nullable=True)
    base_revision: Mapped[str | None] = mapped_column(NAME, nullable=True)
    base_commit: Mapped[str | None] = mapped_column(NAME, nullable=True)
    base_fingerprint: Mapped[str | None] = mapped_column(DIGEST, index=True, nullable=True)
    base_architecture: Mapped[str | None] = mapped_column(DIGEST, index=True, nullable=True)
    model_type: Mapped[str | None] = mapped_column(String(100), nullable=True, index=True)
    post_id: Mapped[str | None] = mapped_column(NAME, nullable=True)
    post_revision: Mapped[str | None] = mapped_column(NAME, nullable=True)
    post_fingerprint: Mapped[str | None] = mapped_column(DIGEST, nullable=True)
    codec: Mapped[str | None] = mapped_column(String(100), nullable=True)
    tensors: Mapped[int | None] = mapped_column(Integer, nullable=True)
    post_parameters: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    stored_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    artifact_created_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # What a version's page and API show, as JSON, computed once at push (or on first read of a manifest pushed
    # before it existed): reads never parse manifest.json, which may hold 10^5 tensors (registry.publish.summarize).
    summary: Mapped[str | None] = mapped_column(Text, nullable=True, deferred=True)


class ManifestTensor(Base):
    """One tensor of a manifest, in manifest order, for paginated tensor lists (written with ``Manifest.summary``)."""

    __tablename__ = "manifest_tensors"
    manifest_id: Mapped[int] = mapped_column(ForeignKey("manifests.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(16))
    dtype: Mapped[str | None] = mapped_column(String(16), nullable=True)
    shape: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON list
    stored_bytes: Mapped[int] = mapped_column(BigInteger)


class ManifestBlob(Base):
    """Every blob a manifest references (config and layers): what garbage collection must keep."""

    __tablename__ = "manifest_blobs"
    manifest_id: Mapped[int] = mapped_column(ForeignKey("manifests.id", ondelete="CASCADE"), primary_key=True)
    digest: Mapped[str] = mapped_column(DIGEST, primary_key=True, index=True)


class Version(Base):
    """A version tag. Never deleted, only marked: a deleted version's name is not reused for other content."""

    __tablename__ = "versions"
    __table_args__ = (
        UniqueConstraint("repository_id", "name", name="uq_versions_repository_name"),
        Index("ix_versions_repository_live", "repository_id", "deleted_at"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    repository_id: Mapped[int] = mapped_column(ForeignKey("repositories.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    manifest_id: Mapped[int] = mapped_column(ForeignKey("manifests.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    pushed_by: Mapped[str | None] = mapped_column(NAME, nullable=True)


class Token(Base):
    """A bearer token, stored as its sha256: the token itself is shown once, at creation."""

    __tablename__ = "tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(NAME)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(String(16))  # pull | push | admin
    namespace: Mapped[str] = mapped_column(NAME)  # a namespace, or "*"
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class UploadSession(Base):
    """A blob upload in progress. Kept here, not in process memory, so any replica can continue it."""

    __tablename__ = "upload_sessions"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    repository: Mapped[str] = mapped_column(NAME)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    driver_state: Mapped[str] = mapped_column(Text, default="{}")  # JSON, owned by the blob driver
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime, index=True)
    # Who opened it: open sessions and their bytes are limited per token (registry.uploads).
    owner_token_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    # The one request allowed to write to it now (a random id) and until when, unless it renews: a second
    # concurrent request is refused, and only the lease holder may record progress or complete the upload.
    lease: Mapped[str | None] = mapped_column(String(255), nullable=True)  # "<process tag> <random hex>" (registry.process)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    reserved: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")  # bytes the lease holder may add
