"""inspect: an artifact's summary, from its manifest alone.

Apart from deltaformat.verify (which re-exports it), so that ``paramdelta inspect`` loads
the manifest reader and nothing of the arithmetic: not numpy, the codecs nor the worker pool.
"""

from __future__ import annotations

from typing import Any

from deltaformat.resolve import DeltaRef, Source, resolve


def inspect(artifact: DeltaRef | Source) -> dict[str, Any]:
    """A summary of an artifact: names, models, sizes, tensor kinds, codecs, files."""
    art = resolve(artifact).materialize()
    m = art.manifest
    return {
        "location": art.location,
        "source": art.source,
        "manifest_digest": art.digest,
        "name": m.name, "version": m.version, "description": m.description, "license": m.license,
        "format_version": m.format_version, "created_at": m.created_at.isoformat(), "tool": m.tool.model_dump(),
        "base": m.base.model_dump(mode="json"), "post": m.post.model_dump(mode="json"),
        "codec": m.codec.model_dump(), **m.summary(),
        "lossy_tensors": {e.name: e.delta.lossy.model_dump() for e in m.tensors if e.delta is not None and e.delta.lossy is not None},
    }


__all__ = ["inspect"]
