"""The artifact folder: manifest.json, its digest, and content-addressed blobs.

    ARTIFACT/
      manifest.json           the manifest (deltaformat.manifest.Manifest), UTF-8 JSON
      manifest.json.sha256    "sha256:<hex>\\n" of manifest.json's exact bytes
      blobs/sha256/<hex>      every blob named by the sha256 of its bytes
      source.json             written by pull: {"reference", "pinned", "registry"}, where it came from

There is deliberately no config.json or model.safetensors at the root: a delta must
never be mistaken for a loadable model.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from deltaformat.digests import blob_digest, hex_of
from deltaformat.dtypes import ITEMSIZE
from deltaformat.errors import CorruptBlobError, FormatError
from deltaformat.fsutil import write_file_atomic
from deltaformat.manifest import MAX_MANIFEST_BYTES, CarriedFile, Chunk, Manifest, Stream, decode_carried, dump_manifest, parse_manifest

if TYPE_CHECKING:
    from deltaformat.codec.base import Decoded

MANIFEST_FILE = "manifest.json"
DIGEST_FILE = "manifest.json.sha256"
SOURCE_FILE = "source.json"
MAX_SOURCE_BYTES = 64 << 10
BLOB_DIR = Path("blobs") / "sha256"


def blob_path(blob_dir: Path, digest: str) -> Path:
    return blob_dir / hex_of(digest)


class ArtifactWriter:
    """Writes blobs into a (temporary) artifact folder, then its manifest."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.blob_dir = folder / BLOB_DIR
        self.blob_dir.mkdir(parents=True, exist_ok=True)

    def put_blob(self, data: bytes) -> Chunk:
        digest = blob_digest(data)
        path = blob_path(self.blob_dir, digest)
        if not path.exists():
            # Two threads may write the same blob (dedup): each writes its own temp file.
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return Chunk(digest=digest, size=len(data))

    def finish(self, manifest: Manifest) -> bytes:
        """Drop blobs the manifest does not reference, then write the manifest and its digest."""
        keep = {hex_of(d) for d in manifest.blob_digests()}
        for p in self.blob_dir.iterdir():
            if p.name not in keep:
                p.unlink()
        data = dump_manifest(manifest)
        write_file_atomic(self.folder / MANIFEST_FILE, data)
        write_file_atomic(self.folder / DIGEST_FILE, (blob_digest(data) + "\n").encode())
        return data


@dataclass
class Artifact:
    """An artifact opened for reading: the parsed manifest and where its blobs are."""

    manifest: Manifest
    manifest_bytes: bytes
    blob_dir: Path
    location: str
    source: str | None = None  # the registry reference it was pulled as (NS/NAME:VERSION@sha256:...), when it was

    @property
    def digest(self) -> str:
        """The artifact's identity: the digest of its manifest bytes."""
        return blob_digest(self.manifest_bytes)

    def has_blob(self, digest: str) -> bool:
        return blob_path(self.blob_dir, digest).is_file()

    def missing_blobs(self) -> list[str]:
        return [d for d in self.manifest.blob_digests() if not self.has_blob(d)]

    def read_blob(self, digest: str, size: int, what: str) -> bytes:
        """Read a blob and check its size and digest; errors name the blob and ``what`` uses it."""
        path = blob_path(self.blob_dir, digest)
        try:
            with open(path, "rb") as f:
                # The file's size is checked before reading: a manifest may not make us
                # allocate more than the bytes really there, nor read more than it says.
                actual = os.fstat(f.fileno()).st_size
                if actual != size:
                    raise CorruptBlobError(f"{what}: blob {digest} has {actual} bytes, manifest says {size}")
                data = f.read(size)
        except FileNotFoundError:
            raise CorruptBlobError(f"{what}: blob {digest} is missing from {self.location}") from None
        if len(data) != size:
            raise CorruptBlobError(f"{what}: blob {digest} changed while it was read ({len(data)} of {size} bytes)")
        if blob_digest(data) != digest:
            raise CorruptBlobError(f"{what}: blob {digest} is corrupt (its sha256 does not match its name)")
        return data

    def read_carried(self, f: CarriedFile) -> bytes:
        """A carried file's content (v2 stores it zstd-compressed), its blob checked first."""
        return decode_carried(f, self.read_blob(f.digest, f.size, f"file {f.path!r}"))

    def decode_chunk(self, stream: Stream, index: int, what: str) -> Decoded:
        """Check and decode chunk ``index`` of ``stream`` (raw element bits, bounded by the manifest).

        Every check has run when this returns; ``.array()`` gives the elements, and
        ``.fill`` hands them out block by block (see ``codec.base.Decoded``).
        """
        chunk = stream.chunks[index]
        # Imported here: the codecs are numpy, and the readers of manifests and blobs alone (inspect,
        # pull, push, search) start without it. Once loaded, the import is a lookup (~0.4 us a chunk).
        from deltaformat.codec import get_codec

        numel = min(stream.chunk_elements, stream.numel - index * stream.chunk_elements)
        codec = get_codec(stream.codec)
        if codec.lossy != (stream.lossy is not None):  # a lossy blob is never read as exact, nor the reverse
            state = "lossy" if codec.lossy else "exact"
            raise FormatError(f"{what}: codec {stream.codec!r} is {state} but the stream is {'not ' if codec.lossy else ''}marked lossy")
        data = self.read_blob(chunk.digest, chunk.size, f"{what} chunk {index}")
        try:
            return codec.decode_blocks(data, numel, ITEMSIZE[stream.dtype])
        except CorruptBlobError as exc:
            raise CorruptBlobError(f"{what} chunk {index}: blob {chunk.digest}: {exc}") from None


def open_artifact(path: str | os.PathLike[str]) -> Artifact:
    """Open an artifact folder, checking the manifest against its recorded digest."""
    folder = Path(path)
    mpath, dpath = folder / MANIFEST_FILE, folder / DIGEST_FILE
    if not folder.is_dir():
        raise FormatError(f"{folder}: no such artifact folder")
    if not mpath.is_file():
        hint = " (this looks like a model folder, not a delta artifact)" if (folder / "config.json").exists() else ""
        raise FormatError(f"{folder}: no {MANIFEST_FILE}; not a paramdelta artifact{hint}")
    if mpath.stat().st_size > MAX_MANIFEST_BYTES:
        raise FormatError(f"{folder}: {MANIFEST_FILE} has {mpath.stat().st_size:,} bytes, more than the {MAX_MANIFEST_BYTES:,} a reader holds")
    data = mpath.read_bytes()
    if not dpath.is_file():
        raise FormatError(f"{folder}: {DIGEST_FILE} is missing; the artifact is incomplete")
    recorded = dpath.read_text().strip()
    if blob_digest(data) != recorded:
        raise FormatError(f"{folder}: {MANIFEST_FILE} is corrupt: its sha256 does not match {DIGEST_FILE}")
    return Artifact(parse_manifest(data), data, folder / BLOB_DIR, str(folder), _pulled_from(folder / SOURCE_FILE))


def _pulled_from(path: Path) -> str | None:
    """The reference recorded by pull, if any (informative: a damaged record is ignored, not trusted)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            record = json.loads(f.read(MAX_SOURCE_BYTES))
        reference = record["reference"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return reference if isinstance(reference, str) else None
