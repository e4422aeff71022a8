"""Pre-flight (spec §7.1): does a base fit a delta? Decided from manifest.json alone.

One check for every caller: ``apply``, ``verify --base``, the lazy loader and the CLI run
it on the manifest before any blob is downloaded or decoded, so nothing is fetched for a
base that would be refused.
"""

from __future__ import annotations

import os

from deltaformat.errors import IncompatibleBaseError
from deltaformat.manifest import Manifest
from deltaformat.models import ModelSource, open_model
from deltaformat.resolve import DeltaRef, Source, resolve

MAX_LISTED = 8  # mismatches shown in the message; the rest are counted


def check_base(manifest: Manifest, model: ModelSource, location: str = "the artifact") -> None:
    """Fail with a list of mismatches unless ``model`` has the tensors the delta was taken on.

    A tensor the delta removes may be missing from the new base: the output drops it anyway
    (e.g. a buffer such as ``position_ids`` that newer transformers no longer save).
    """
    problems = []
    expected = {t.name: t.base for t in manifest.tensors if t.base is not None}
    removed = {t.name for t in manifest.tensors if t.kind == "removed"}
    for name, info in expected.items():
        ref = model.tensors.get(name)
        if ref is None:
            if name not in removed:
                problems.append(f"{name}: missing")
        elif list(ref.shape) != info.shape or ref.dtype != info.dtype:
            problems.append(f"{name}: expected {info.dtype}{info.shape}, found {ref.dtype}{list(ref.shape)}")
    problems += [f"{n}: not in the delta's base" for n in model.tensors if n not in expected]
    if problems:
        shown = "; ".join(problems[:MAX_LISTED])
        more = f"; and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise IncompatibleBaseError(
            f"base {model.id} does not fit {location} (extracted from {manifest.base.id}): "
            f"{len(problems)} tensor mismatch(es): {shown}{more}"
        )


def preflight(delta: Manifest | DeltaRef | Source, base: ModelSource | str | os.PathLike[str], location: str | None = None,
              *, registry: str | None = None, token: str | None = None) -> Manifest:
    """Check that ``base`` fits ``delta`` from its manifest alone; return that manifest.

    ``delta`` is a manifest, an artifact folder or Artifact, or a registry reference (of
    which only manifest.json is fetched: ``registry``/``token`` as for ``client.pull``).
    ``base`` is a model folder, a Hub id, or a model already opened. Raises
    ``IncompatibleBaseError`` listing the mismatches.
    """
    if isinstance(delta, Manifest):
        manifest, where = delta, location or "the artifact"
    else:
        source = resolve(delta, registry=registry, token=token)
        manifest, where = source.manifest(), location or source.location
    model = base if isinstance(base, ModelSource) else open_model(base)
    check_base(manifest, model, where)
    return manifest


__all__ = ["check_base", "preflight", "MAX_LISTED"]
