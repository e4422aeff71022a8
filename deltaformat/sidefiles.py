"""What apply writes besides the shards (spec §7.5): config.json, the post model's carried
files, and paramdelta.json, the record of the inputs and of every file's sha256.

The lazy loader and ``paramdelta mount`` present the same files, so the bytes of each are
made by one function here (``config_text``, ``output_config``, ``provenance_bytes``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from deltaformat._version import __version__
from deltaformat.artifact import Artifact
from deltaformat.digests import blob_digest
from deltaformat.errors import FormatError, VerificationError
from deltaformat.fsutil import TEMP_MARK
from deltaformat.manifest import check_carried_content
from deltaformat.models import ModelSource
from deltaformat.plan import OutTensor

if TYPE_CHECKING:
    from typing_extensions import NotRequired  # typing has it from 3.11; 3.10 is supported

# config.json keys taken from the post model: the tokens it was trained to use.
POST_CONFIG_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings")
PROVENANCE_FILE = "paramdelta.json"

ConfigChanges = dict[str, tuple[Any, Any, Any]]  # key -> (delta's base, post, new base) where they differ


def write_side_files(folder: Path, arts: list[Artifact], model: ModelSource, plan: list[OutTensor]) -> ConfigChanges:
    """config.json from the new base with the post model's token ids; the post model's tokenizer files."""
    first = arts[0]
    m = first.manifest
    config = output_config(arts, model, plan)
    if config:
        (folder / "config.json").write_text(config_text(config))
    for f in m.files:
        data = first.read_carried(f)  # lossy: v2 carried files are compressed
        check_carried_content(f.path, data)
        (folder / f.path).parent.mkdir(parents=True, exist_ok=True)
        create_file(folder / f.path, data)
    keys = set(m.base_config) | set(m.post_config) | set(model.config)
    return {
        k: (m.base_config.get(k), m.post_config.get(k), model.config.get(k))
        for k in sorted(keys)
        if not (m.base_config.get(k) == m.post_config.get(k) == model.config.get(k))
    }


def config_text(config: dict[str, Any]) -> str:
    """config.json as apply writes it."""
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


def output_config(arts: list[Artifact], model: ModelSource, plan: list[OutTensor]) -> dict[str, Any]:
    """The output's config.json: the new base's, with the post model's token ids (and its vocabulary size when resized)."""
    m = arts[0].manifest
    config = dict(model.config)
    for key in POST_CONFIG_KEYS:
        if key in m.post_config:
            config[key] = m.post_config[key]
    rows = {t.shape[0] for t in plan if t.values is not None and t.base is not None}
    if len(rows) == 1 and "vocab_size" in config:
        config["vocab_size"] = rows.pop()
    return config


def create_file(path: Path, data: bytes) -> None:
    """Write a new file; an existing one (or a symlink) is an error, never overwritten."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except FileExistsError:
        raise FormatError(f"carried file {path.name!r} collides with a file apply writes") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def record_files(folder: Path, shard_digests: dict[str, tuple[str, int]]) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file in the output (shards as hashed while written).

    The output folder started empty; anything in it that apply did not write as a
    regular file is an error, so the record covers the whole folder.
    """
    files = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if rel == TEMP_MARK or path.is_dir() and not path.is_symlink():
            continue
        if path.is_symlink() or not path.is_file():
            raise VerificationError(f"{rel}: the output holds something apply did not write as a file")
        if rel in shard_digests:
            digest, size = shard_digests[rel]
        else:
            data = path.read_bytes()
            digest, size = blob_digest(data), len(data)
        files[rel] = {"sha256": digest, "size": size}
    return files


def write_provenance(folder: Path, arts: list[Artifact], alphas: list[float], model: ModelSource, verified: bool,
                     files: dict[str, dict[str, Any]]) -> None:
    """paramdelta.json: the inputs, whether the output was proven to be the post model, and
    the sha256 of every other file in the folder (what was proven is exactly what is there)."""
    create_file(folder / PROVENANCE_FILE, provenance_bytes(arts, alphas, model, verified, files))


class LossyRecord(TypedDict):
    """lossy_record(): the preset, then Manifest.lossy_errors()'s keys (all there for a lossy artifact, the only kind
    it is called for; absent for an exact one, whose errors are None)."""

    preset: str | None
    max_abs_error: NotRequired[float]
    max_rel_frobenius_error: NotRequired[float]
    rel_frobenius_error: NotRequired[float]
    lossy_tensors: NotRequired[int]


def lossy_record(art: Artifact) -> LossyRecord:
    """A lossy delta's preset and its recorded errors against the exact Δ (what apply reports instead of exactness)."""
    preset, errors = art.manifest.lossy_preset, art.manifest.lossy_errors()
    # two literals rather than **(errors or {}): mypy cannot type that {} as part of a LossyRecord
    return {"preset": preset, **errors} if errors is not None else {"preset": preset}


def provenance_bytes(arts: list[Artifact], alphas: list[float], model: ModelSource, verified: bool,
                     files: dict[str, dict[str, Any]]) -> bytes:
    """paramdelta.json's bytes (``files``: relative path -> sha256 and size, in the folder's sorted order)."""
    record = {
        "tool": {"name": "paramdelta", "version": __version__},
        "base": {"id": model.id, "source": model.source, "revision": model.revision, "commit": model.commit},
        "deltas": [
            {"location": a.location, "manifest_digest": a.digest, "name": a.manifest.name, "version": a.manifest.version,
             "source": a.source, "alpha": al, **({"lossy": lossy_record(a)} if a.manifest.is_lossy else {})}
            for a, al in zip(arts, alphas)
        ],
        "verified_exact": verified,
        "files": files,
    }
    return (json.dumps(record, indent=2) + "\n").encode()
