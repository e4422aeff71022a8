"""One resolver for everything a user may name as a delta: an artifact folder, an opened
``Artifact``, or a registry reference (``[REGISTRY/]NS/NAME[:VERSION|@sha256:...]``).

Each resolves to a ``Source`` with two steps, so that callers can check before they pay:

    source = resolve("acme/chat:1.0")
    source.manifest()      # cheap: manifest.json alone (one small request for a registry)
    source.materialize()   # the Artifact with its blobs (downloaded into the cache as needed;
                           # manifest.json is not fetched again: the first step's bytes are kept)

With PARAMDELTA_OFFLINE=1 both steps of a registry reference are served from the download
cache alone (``deltaformat.client``). The HTTP client is imported only when a registry
reference is resolved: a folder never loads it.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING

from deltaformat.artifact import Artifact, open_artifact
from deltaformat.manifest import Manifest

if TYPE_CHECKING:  # a folder never loads the HTTP client
    from deltaformat.registry_client import ManifestJson

DeltaRef = str | os.PathLike[str] | Artifact  # what apply, verify and inspect accept for one delta


class Source(ABC):
    """A delta named by the user, not yet (necessarily) downloaded."""

    location: str  # as the user named it: in messages, and in what apply records

    @abstractmethod
    def manifest(self) -> Manifest:
        """The delta's manifest.json alone, without its blobs: enough to pre-flight a base."""

    @abstractmethod
    def materialize(self, *, quiet: bool = False) -> Artifact:
        """The delta as an Artifact whose blobs can be read (downloaded first where needed)."""


class OpenedSource(Source):
    """An Artifact the caller already opened."""

    def __init__(self, artifact: Artifact):
        self.artifact, self.location = artifact, artifact.location

    def manifest(self) -> Manifest:
        return self.artifact.manifest

    def materialize(self, *, quiet: bool = False) -> Artifact:
        return self.artifact


class FolderSource(Source):
    """An artifact folder: opening it reads manifest.json (checked against its digest), not the blobs."""

    def __init__(self, folder: Path):
        self.folder, self.location = folder, str(folder)
        self._artifact: Artifact | None = None

    def manifest(self) -> Manifest:
        return self.materialize().manifest

    def materialize(self, *, quiet: bool = False) -> Artifact:
        if self._artifact is None:
            self._artifact = open_artifact(self.folder)
        return self._artifact


class RegistrySource(Source):
    """A version in a registry: manifest.json by one small request, the blobs by a pull into the cache."""

    def __init__(self, ref: str, *, registry: str | None = None, token: str | None = None):
        self.location, self.registry, self.token = ref, registry, token
        self._fetched: ManifestJson | None = None  # kept for materialize: manifest.json goes over the wire once

    def manifest(self) -> Manifest:
        if self._fetched is None:
            from deltaformat.client import fetch_manifest_json  # the HTTP client only when a registry is asked

            self._fetched = fetch_manifest_json(self.location, registry=self.registry, token=self.token)
        return self._fetched.manifest

    def materialize(self, *, quiet: bool = False) -> Artifact:
        from deltaformat.client import fetch_artifact

        return fetch_artifact(self.location, registry=self.registry, token=self.token, quiet=quiet,
                              preflighted=self._fetched)


def resolve(ref: DeltaRef | Source, *, registry: str | None = None, token: str | None = None) -> Source:
    """The ``Source`` a delta reference names; nothing is read or downloaded yet.

    An existing path is an artifact folder (a folder wins over a reference spelled the
    same); anything else must parse as a registry reference, and the error says why not.
    """
    if isinstance(ref, Source):
        return ref
    if isinstance(ref, Artifact):
        return OpenedSource(ref)
    if Path(ref).exists():
        return FolderSource(Path(ref))
    from deltaformat.oci import parse_reference

    text = os.fspath(ref)
    try:
        parse_reference(text)
    except ValueError as exc:
        raise ValueError(f"{text}: no such artifact folder, and not a registry reference: {exc}") from None
    return RegistrySource(text, registry=registry, token=token)


__all__ = ["DeltaRef", "Source", "OpenedSource", "FolderSource", "RegistrySource", "resolve"]
