"""Reading models: local Hugging Face folders and Hub ids, tensor by tensor.

Tensors are read with positional reads into buffers we own (not mmap), so the memory a
process holds is exactly the chunks in flight, whatever the model size. Pickled
weights are refused: unpickling runs arbitrary code.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydantic_core

from deltaformat.dtypes import ITEMSIZE
from deltaformat.errors import ModelError
from deltaformat.manifest import CARRIED_DIRS, CARRIED_FILES, MAX_DIMS, MAX_MANIFEST_BYTES, MAX_TENSOR_ELEMENTS
from deltaformat.rawbits import uint_dtype

MAX_HEADER_BYTES = 100 * 1024 * 1024
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")

# Files of a post model that make the output usable as the post model was: tokenizer,
# chat template, generation settings (the allow-list lives with the manifest, which
# enforces it). config.json is kept inline in the manifest instead.
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*)(@(?P<rev>[A-Za-z0-9._/-]+))?$")


@dataclass(frozen=True)
class TensorRef:
    """A tensor inside a safetensors file: where its bytes are, read on demand."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    path: Path
    offset: int  # absolute file offset of the first byte

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def itemsize(self) -> int:
        return ITEMSIZE[self.dtype]

    def read(self, start: int, count: int, out: np.ndarray | None = None) -> np.ndarray:
        """Read elements [start, start+count) as raw bits (numpy unsigned ints), into ``out`` when given."""
        out = np.empty(count, dtype=uint_dtype(self.dtype)) if out is None else out[:count]
        buf = out.data.cast("B")
        pos = self.offset + start * self.itemsize
        with open(self.path, "rb", buffering=0) as f:
            done = 0
            while done < len(buf):
                n = os.preadv(f.fileno(), [buf[done:]], pos + done)
                if n == 0:
                    raise ModelError(f"{self.path.name}: tensor {self.name!r} is truncated (file ends early)")
                done += n
        return out


@dataclass
class ModelSource:
    """A model opened for reading: its identity, tensors and side files."""

    id: str
    source: str  # "local" | "hub"
    path: Path
    revision: str | None = None
    commit: str | None = None
    tensors: dict[str, TensorRef] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def carried_files(self) -> list[str]:
        """Relative paths of the side files present (tokenizer, chat template, ...).

        Each must be a regular file (a symlink could carry any file of the machine into a
        published artifact); a folder's other entries are refused, not silently left out.
        """
        found = [f for f in CARRIED_FILES if self.side_file(f) is not None]
        for d, suffix in CARRIED_DIRS.items():
            folder = self.side_file(d, folder=True)
            if folder is None:
                continue
            for entry in sorted(folder.iterdir()):
                rel = f"{d}/{entry.name}"
                if not entry.name.endswith(suffix) or entry.name.startswith("."):
                    raise ModelError(f"{self.path}: {rel} is not a {suffix} file; {d}/ may hold only those")
                self.side_file(rel)
                found.append(rel)
        return found

    def side_file(self, rel: str, *, folder: bool = False) -> Path | None:
        """The path of side file ``rel`` when present (None when absent); refuses anything but a
        regular file (or folder), so no symlink, FIFO or device is ever read as one.

        A Hub snapshot (huggingface_hub's cache: REPO/snapshots/COMMIT/) is made of symlinks
        into REPO/blobs/: those, and only those, are followed, whether the snapshot was
        named by Hub id or by its path.
        """
        path = self.path / rel
        try:
            st = path.lstat()
        except FileNotFoundError:
            return None
        if stat.S_ISLNK(st.st_mode) and self._in_snapshot_blobs(path):
            st = path.stat()
        elif stat.S_ISLNK(st.st_mode):
            raise ModelError(f"{path}: is a symbolic link; paramdelta reads side files only as regular files")
        if not (stat.S_ISDIR(st.st_mode) if folder else stat.S_ISREG(st.st_mode)):
            raise ModelError(f"{path}: is not a regular {'folder' if folder else 'file'}")
        return path

    def _in_snapshot_blobs(self, link: Path) -> bool:
        snapshots = self.path.parent
        return snapshots.name == "snapshots" and link.resolve().is_relative_to((snapshots.parent / "blobs").resolve())

    def read_side_file(self, rel: str, max_bytes: int) -> bytes:
        """The bytes of side file ``rel``, opened without following a final symlink (unless into a
        Hub snapshot's blobs), refused unread when over ``max_bytes``."""
        path = self.side_file(rel)
        if path is None:
            raise ModelError(f"{self.path / rel}: not found")
        if path.is_symlink():  # checked by side_file: a snapshot's link to its blob, read through the blob's path
            path = path.resolve()
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                raise ModelError(f"{self.path / rel}: {size:,} bytes; paramdelta reads at most {max_bytes:,} from it")
            return f.read(max_bytes + 1)[:max_bytes]

    @property
    def num_parameters(self) -> int:
        return sum(t.numel for t in self.tensors.values())


def open_model(spec: str | os.PathLike[str]) -> ModelSource:
    """Open a local model folder, or a Hub id ``org/name[@revision]`` via huggingface_hub.

    Hub ids resolve through huggingface_hub's cache (so HF_HUB_OFFLINE=1 works from it);
    only safetensors, JSON and tokenizer files are fetched, and the resolved commit is kept.
    """
    path = Path(spec)
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"{spec}: a model must be a folder holding config.json and *.safetensors")
        model = ModelSource(id=path.resolve().name, source="local", path=path)
    else:
        match = _HUB_ID.match(str(spec))
        if not match:
            raise ModelError(f"{spec}: no such folder, and not a Hub id of the form org/name[@revision]")
        model = _open_hub(match["repo"], match["rev"])
    model.config = _read_config(model)
    model.tensors = _index_tensors(model.path)
    return model


def _open_hub(repo: str, revision: str | None) -> ModelSource:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    patterns = ["*.safetensors", "*.json", "*.jinja", "*.txt", "*.model", "additional_chat_templates/*"]
    try:
        folder = snapshot_download(repo, revision=revision, allow_patterns=patterns)
    except LocalEntryNotFoundError as exc:
        raise ModelError(f"{repo}: not in the Hugging Face cache and the Hub cannot be reached ({exc})") from None
    except RepositoryNotFoundError:
        raise ModelError(f"{repo}: no such repository on the Hub (or it is private: log in with `hf auth login`)") from None
    except (HfHubHTTPError, OSError) as exc:
        raise ModelError(f"{repo}: download failed: {exc}") from None
    path = Path(folder)
    return ModelSource(id=repo, source="hub", path=path, revision=revision, commit=path.name)


def _read_config(model: ModelSource) -> dict[str, Any]:
    cfg = model.path / "config.json"
    if model.side_file("config.json") is None:  # (config.json goes into the manifest: no symlinks either)
        return {}
    try:
        data = pydantic_core.from_json(model.read_side_file("config.json", MAX_MANIFEST_BYTES))  # depth-bounded, unlike json.loads
    except ValueError as exc:
        raise ModelError(f"{cfg}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{cfg}: must hold a JSON object")
    return data


def _weight_files(folder: Path) -> list[Path]:
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ModelError(f"{index}: not a safetensors index ({exc})") from None
        names = sorted(set(weight_map.values()))
        for n in names:
            if "/" in n or n.startswith(".") or not (folder / n).is_file():
                raise ModelError(f"{index}: names shard {n!r}, which is missing or not a plain file name")
        return [folder / n for n in names]
    if (folder / SINGLE_FILE).is_file():
        return [folder / SINGLE_FILE]
    found = sorted(folder.glob("*.safetensors"))
    if found:
        return found
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickled:
        raise ModelError(
            f"{folder}: holds only pickled weights ({', '.join(pickled[:3])}); paramdelta never unpickles "
            "(loading a pickle runs arbitrary code). Convert a checkpoint you trust to safetensors first, e.g. "
            "`AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(OUT)` in transformers."
        )
    raise ModelError(f"{folder}: no model.safetensors, no {INDEX_FILE} and no *.safetensors files")


def _index_tensors(folder: Path) -> dict[str, TensorRef]:
    tensors: dict[str, TensorRef] = {}
    for path in _weight_files(folder):
        for ref in read_safetensors_header(path):
            if ref.name in tensors:
                raise ModelError(f"{folder}: tensor {ref.name!r} appears in both {tensors[ref.name].path.name} and {path.name}")
            tensors[ref.name] = ref
    return tensors


def read_safetensors_header(path: Path) -> list[TensorRef]:
    """Parse and validate a safetensors header; return its tensors in file order."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ModelError(f"{path.name}: too short to be a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise ModelError(f"{path.name}: safetensors header length {n} is invalid for a file of {size} bytes")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"{path.name}: safetensors header is not valid JSON ({exc})") from None
    start = 8 + n
    refs = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (b, e) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ModelError(f"{path.name}: tensor {name!r} has a malformed header entry") from None
        if dtype not in ITEMSIZE:
            raise ModelError(f"{path.name}: tensor {name!r} has unsupported dtype {dtype!r}")
        ref = TensorRef(name, dtype, shape, path, start + b)
        if len(shape) > MAX_DIMS or any(not 0 <= d <= MAX_TENSOR_ELEMENTS for d in shape) or ref.numel > MAX_TENSOR_ELEMENTS:
            raise ModelError(f"{path.name}: tensor {name!r} has shape {list(shape)}, beyond format v1's limits "
                             f"({MAX_DIMS} dimensions, {MAX_TENSOR_ELEMENTS} elements)")
        if e - b != ref.numel * ref.itemsize or start + e > size:
            raise ModelError(f"{path.name}: tensor {name!r} has data offsets that do not match its shape {list(shape)} and dtype {dtype}")
        refs.append(ref)
    return sorted(refs, key=lambda r: r.offset)
