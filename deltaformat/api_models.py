"""The registry's search answers as pydantic models the client parses without the registry installed.

``/api/v1/deltas`` answers a ``Page[DeltaSummary]`` and ``/api/v1/compatible`` a
``Page[CompatibleVersion]`` (registry.schemas describes the same JSON for the server). A
registry without that API (a stock OCI one) is listed from its catalog, tags and manifest
annotations instead: a ``CatalogPage`` of ``TaggedDelta``, which says in ``notice`` that it
was listed that way and how far the listing went.

The models still answer ``page["items"]`` and ``page.get("next_cursor")``, the dicts these calls
returned before, with a ParamDeltaDeprecationWarning (a DeprecationWarning): use the attributes.
"""

from __future__ import annotations

import warnings
from datetime import datetime, timezone
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, Field

from deltaformat.errors import ParamDeltaDeprecationWarning

T = TypeVar("T")
# The registry's database keeps naive UTC; the API says so (RFC 3339 "...Z").
UtcDatetime = Annotated[datetime, AfterValidator(lambda t: t if t.tzinfo else t.replace(tzinfo=timezone.utc))]


class _DictAccess(BaseModel):
    """``model["field"]`` and ``model.get("field")``, deprecated: these calls returned dicts before."""

    def __getitem__(self, key: str) -> Any:
        warnings.warn(f"{type(self).__name__}[{key!r}]: use the attribute .{key} (search results are models now)",
                      ParamDeltaDeprecationWarning, stacklevel=2)
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def get(self, key: str, default: Any = None) -> Any:
        warnings.warn(f"{type(self).__name__}.get({key!r}): use the attribute .{key}", ParamDeltaDeprecationWarning,
                      stacklevel=2)
        return getattr(self, key, default)


class Page(_DictAccess, Generic[T]):
    """One page of results; pass ``next_cursor`` back as ``cursor`` for the next (null: no more)."""

    items: list[T]
    next_cursor: str | None = None


class DeltaSummary(_DictAccess):
    """A delta in a list: its newest version's metadata."""

    name: str = Field(description="NS/NAME")
    namespace: str
    description: str | None
    latest_version: str
    latest_digest: str
    updated_at: UtcDatetime
    base_id: str
    base_revision: str | None
    base_fingerprint: str
    model_type: str | None
    post_id: str
    codec: str
    stored_bytes: int
    post_parameters: int


class CompatibleVersion(_DictAccess):
    """A version that fits a given base, and how: the exact base, the same model id, or the same tensor shapes."""

    name: str
    version: str
    digest: str
    match: Literal["fingerprint", "id", "shapes"]
    base_id: str
    base_fingerprint: str
    post_id: str
    published_at: UtcDatetime
    stored_bytes: int


class TaggedDelta(_DictAccess):
    """A delta found in a registry without the paramdelta API: what its OCI manifest's annotations say.
    Field names are DeltaSummary's where they mean the same; what annotations do not carry is absent."""

    name: str = Field(description="NS/NAME, the repository")
    namespace: str
    latest_version: str = Field(description="the tag listed: 'latest' when there is one, else the last tag")
    latest_digest: str
    description: str | None = None
    updated_at: datetime | None = Field(None, description="when the delta was extracted (its created annotation)")
    base_id: str
    base_fingerprint: str
    post_id: str | None = None
    format_version: str | None = None
    stored_bytes: int = Field(description="manifest.json and every layer, as the OCI manifest lists them")


class CatalogPage(Page[TaggedDelta]):
    """Deltas listed from a stock OCI registry's /v2/_catalog, tags and annotations."""

    notice: str = Field(description="one line: how this was listed, and where the listing stopped")


__all__ = ["Page", "DeltaSummary", "CompatibleVersion", "TaggedDelta", "CatalogPage", "UtcDatetime"]
