"""The registry's services wired together: one object per process, kept on ``app.state.registry``.

Routers call these services and translate HTTP to and from them; the services hold
the business rules and know nothing of requests and responses.
"""

from __future__ import annotations

from dataclasses import dataclass

from registry.auth import Authenticator
from registry.blobs import Blobs
from registry.catalog import Catalog
from registry.db import Database
from registry.publish import Manifests
from registry.referrers import Referrers
from registry.settings import Settings
from registry.storage import BlobStore, open_store
from registry.uploads import Uploads


@dataclass
class Registry:
    settings: Settings
    db: Database
    store: BlobStore
    auth: Authenticator
    blobs: Blobs
    uploads: Uploads
    manifests: Manifests
    catalog: Catalog
    referrers: Referrers

    @classmethod
    def open(cls, settings: Settings) -> Registry:
        """Open the database (migrating it) and the blob store named by ``settings``."""
        db = Database(settings.resolved_database_url())
        store = open_store(settings)
        manifests = Manifests(db, store, settings.max_manifest_bytes, settings.manifest_cache_bytes)
        return cls(
            settings=settings, db=db, store=store,
            auth=Authenticator(db, anonymous_pull=settings.anonymous_pull, public_url=settings.public_url),
            blobs=Blobs(db, store), uploads=Uploads(db, store, settings), manifests=manifests,
            catalog=Catalog(db, manifests), referrers=Referrers(db),
        )

    def public_url(self, request_base_url: str) -> str:
        """The URL users reach this registry at: PARAMDELTA_PUBLIC_URL, else what the request used."""
        return (self.settings.public_url or request_base_url).rstrip("/")

    def close(self) -> None:
        self.store.close()
        self.db.dispose()
