"""An artifact under another name and version, for tests that push one artifact to several repositories.

The registry refuses a manifest.json whose name or version differs from the repository and tag it is
pushed to (issue #10, item 7), so a test that wants "the same delta at acme/x:2.0" makes a copy whose
manifest.json says so. The blobs are hard-linked (copied where links are not possible): their digests
are unchanged, so pushes of several copies still share them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from deltaformat.artifact import BLOB_DIR, DIGEST_FILE, MANIFEST_FILE
from deltaformat.digests import blob_digest
from deltaformat.manifest import dump_manifest, parse_manifest
from deltaformat.oci import parse_reference


def push(artifact: Path, ref: str, **kwargs: Any) -> Any:
    """``deltaformat.client.push`` of ``artifact`` named for ``ref`` (the copy is kept next to ``artifact``)."""
    from deltaformat import client

    parsed = parse_reference(ref)
    return client.push(renamed(artifact, parsed.name, parsed.tag), ref, **kwargs)


def renamed(artifact: Path, name: str, version: str | None, into: Path | None = None) -> Path:
    """A copy of ``artifact`` in ``into`` (default: a folder next to it) whose manifest.json names ``name`` and
    ``version`` (``artifact`` itself when what it states fits: a None name or version claims nothing, as the
    registry reads it; paramdelta_dev.scaleout.variant's name neither)."""
    into = into if into is not None else artifact.parent / ".renamed"
    original = parse_manifest((artifact / MANIFEST_FILE).read_bytes())
    if original.name in (name, None) and original.version in (version, None):  # what it states fits (None: no claim)
        return artifact
    folder = into / f"{name.replace('/', '--')}--{version}--{artifact.name}"
    if folder.exists():
        return folder
    manifest = original.model_copy(update={"name": name, "version": version})
    into.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=into))  # built aside: tests push from threads
    (staging / BLOB_DIR).mkdir(parents=True)
    for blob in (artifact / BLOB_DIR).iterdir():
        try:
            os.link(blob, staging / BLOB_DIR / blob.name)
        except OSError:
            shutil.copyfile(blob, staging / BLOB_DIR / blob.name)
    data = dump_manifest(manifest)
    (staging / MANIFEST_FILE).write_bytes(data)
    (staging / DIGEST_FILE).write_text(blob_digest(data) + "\n")
    try:
        staging.rename(folder)
    except OSError:  # another thread made the same copy first
        shutil.rmtree(staging)
    return folder
