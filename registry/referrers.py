"""The OCI referrers API: ``GET /v2/<name>/referrers/<digest>`` lists the manifests whose ``subject`` is
that digest (signatures, SBOMs, attestations), as an OCI image index of descriptors.

The relation is stored at push (``manifests.subject_digest``, ``manifests.artifact_type``): a listing
is one indexed query, and the subject need not exist (a referrer may be pushed before its subject; an
unknown subject, or repository, is answered with an empty index, never a 404). ``artifactType`` filters the list; the answer then
says so in ``OCI-Filters-Applied``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from registry.blobs import check_digest
from registry.content import OCI_INDEX
from registry.db import Database
from registry.db.models import Manifest
from registry.db.queries import find_repository
from registry.errors import InvalidRequest

log = logging.getLogger("paramdelta.registry")
MAX_REFERRERS = 1000  # descriptors in one answer: a subject with more is listed by its first (oldest) ones


@dataclass
class ReferrerList:
    index: bytes  # the OCI image index, serialised
    filtered: bool  # whether an artifactType filter was applied


class Referrers:
    """Read-only: the referrers of a manifest, from the database."""

    def __init__(self, db: Database):
        self.db = db

    def list(self, name: str, digest: str, artifact_type: str | None = None) -> ReferrerList:
        """The live manifests of repository ``name`` whose subject is ``digest``, optionally of one artifactType."""
        check_digest(digest)
        if artifact_type is not None and not 0 < len(artifact_type) <= 255:
            raise InvalidRequest(f"artifactType has {len(artifact_type)} characters; give 1 to 255")
        with self.db.session() as s:
            repo = find_repository(s, name)
            if repo is None:  # nothing refers to anything there yet: an empty list, as for an unknown subject
                return ReferrerList(_index([]), artifact_type is not None)
            q = (select(Manifest.digest, Manifest.media_type, Manifest.size, Manifest.artifact_type, Manifest.content)
                 .where(Manifest.repository_id == repo.id, Manifest.subject_digest == digest, Manifest.deleted_at.is_(None)))
            if artifact_type is not None:
                q = q.where(Manifest.artifact_type == artifact_type)
            rows = s.execute(q.order_by(Manifest.id).limit(MAX_REFERRERS + 1)).all()
        if len(rows) > MAX_REFERRERS:
            log.warning("%s@%s has more than %d referrers; the first %d are listed", name, digest, MAX_REFERRERS, MAX_REFERRERS)
        return ReferrerList(_index([_descriptor(*row) for row in rows[:MAX_REFERRERS]]), artifact_type is not None)


def _index(descriptors: list[dict[str, Any]]) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}, separators=(",", ":")).encode()


def _descriptor(digest: str, media_type: str, size: int, artifact_type: str | None, content: bytes) -> dict[str, Any]:
    """A referrer's descriptor: its artifactType, and its annotations as the spec asks (read from the stored bytes,
    which registry.content checked to be a JSON object at push)."""
    desc: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": size}
    if artifact_type:
        desc["artifactType"] = artifact_type
    annotations = json.loads(content).get("annotations")
    if annotations:
        desc["annotations"] = annotations
    return desc
