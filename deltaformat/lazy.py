"""Use a delta without writing a merged copy: tensors of the ParamΔ model computed on access.

    with deltaformat.open_model(["llama3-inst.delta"], "llama3.1-base") as tensors:
        w = tensors["model.layers.0.mlp.up_proj.weight"]   # computed now, from base + Δ

    model = deltaformat.lazy.load_transformers_model(["llama3-inst.delta"], "llama3.1-base")

Each tensor is exactly what ``apply`` would write for it (same dtype, shape and bytes):
the open, the pre-flight and the plan are apply's own (``apply.prepare``), and each
chunk is computed by apply's own ``_chunk``. Nothing is cached: computing a tensor holds
that tensor plus the chunk being computed, and the caller decides what to keep.

Values are torch tensors by default (``framework="pt"``, as safetensors' ``safe_open``
names it): torch is what can hold bf16 and fp8, the dtypes models ship in, and what
models are run with (``pip install 'paramdelta[torch]'``). ``framework="np"`` gives numpy
arrays for the dtypes numpy has, without torch, and refuses BF16/F8 tensors by name
rather than hand out raw bits.
"""

from __future__ import annotations

import bisect
import hashlib
import importlib.util
import math
import os
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

from deltaformat.apply import (PROVENANCE_FILE, _base_chunk_hash, _chunk, _OutTensor, _probe_other_base, _Proof, config_text,
                               output_config, prepare, provenance_bytes)
from deltaformat.artifact import Artifact
from deltaformat.digests import chunk_hash
from deltaformat.dtypes import ITEMSIZE, uint_dtype
from deltaformat.errors import FormatError, ModelError, VerificationError
from deltaformat.extract import chunk_ranges
from deltaformat.manifest import CHUNK_ELEMENTS, check_carried_content
from deltaformat.models import INDEX_FILE, ModelSource
from deltaformat.writer import ShardPlan, index_text, parse_size, plan_shards

if TYPE_CHECKING:
    import torch

FRAMEWORKS = ("pt", "np")
# safetensors dtypes numpy represents (BF16 and the F8s it has no type for).
_NUMPY_DTYPES = {
    "BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "I16": np.int16, "U16": np.uint16, "F16": np.float16,
    "I32": np.int32, "U32": np.uint32, "F32": np.float32, "I64": np.int64, "U64": np.uint64, "F64": np.float64,
}


@cache
def _torch_dtypes() -> dict[str, "torch.dtype"]:
    import torch

    return {
        "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
        "I16": torch.int16, "U16": torch.uint16, "F16": torch.float16, "BF16": torch.bfloat16,
        "I32": torch.int32, "U32": torch.uint32, "F32": torch.float32, "I64": torch.int64, "U64": torch.uint64, "F64": torch.float64,
    }


class LazyModel(Mapping):
    """Read-only mapping of apply's output tensor names (in apply's order) to tensors computed on access.

    A tensor apply would check against the post model's digest (original base, one
    artifact at alpha 1) is checked here too, each time it is computed, and a mismatch
    on the original base raises ``VerificationError`` as apply does. ``verified_exact``
    says whether every tensor was computed and proven to be the post model's.
    """

    def __init__(self, arts: list[Artifact], alphas: list[float], model: ModelSource, plan: list[_OutTensor],
                 framework: str = "pt", device: str = "cpu"):
        if framework not in FRAMEWORKS:
            raise ValueError(f"framework {framework!r}: use 'pt' (torch tensors) or 'np' (numpy arrays)")
        if framework == "pt" and importlib.util.find_spec("torch") is None:
            raise ValueError("framework 'pt' gives torch tensors and torch is not installed: "
                             "pip install 'paramdelta[torch]', or open the model with framework='np'")
        self.artifacts, self.alphas, self.base = arts, alphas, model
        self.config = output_config(arts, model, plan)
        self.plan = plan
        self._plan = {t.name: t for t in plan}
        self._framework, self._device = framework, device
        self._lock = threading.Lock()
        self._closed = False
        self._verified: set[str] = set()
        self._settled: set[str] = set()  # tensors whose proof ran (proven, or found on another base)
        self._failed: set[str] = set()  # tensors that differ from the post model on the original base
        # apply's up-front probe: hash the smallest bases (about 1 % of the model); on a new
        # base one of them differs, and from then on nothing can be proven, so nothing is hashed.
        probes = {t.name: _Proof(t, len(chunk_ranges(t.numel))) for t in plan}
        self._other_base = _probe_other_base(plan, probes)
        self._known_original = {n for n, p in probes.items() if p.known_original}

    # -- the mapping ---------------------------------------------------------------
    def __getitem__(self, name: str) -> Any:
        if self._closed:
            raise ValueError(f"tensor {name!r}: the lazy model was closed")
        t = self._plan[name]  # KeyError for a name apply would not write, as a dict says it
        bits = self._compute(t)
        return self._as_tensor(bits, t)

    def __iter__(self) -> Iterator[str]:
        return iter(self._plan)

    def __len__(self) -> int:
        return len(self._plan)

    def dtype_and_shape(self, name: str) -> tuple[str, list[int]]:
        """The safetensors dtype and shape of tensor ``name``, known without computing it."""
        t = self._plan[name]
        return t.dtype, list(t.shape)

    @property
    def verified_exact(self) -> bool:
        return bool(self._plan) and self._verified == set(self._plan)

    @property
    def exact_possible(self) -> bool:
        """False once ``verified_exact`` can no longer become True (another base, several
        artifacts, an alpha other than 1, a new dtype): then nothing is hashed any more."""
        return bool(self._plan) and not self._other_base and all(t.expect is not None for t in self.plan)

    # -- lifetime --------------------------------------------------------------------
    def close(self) -> None:
        """Refuse further access. No file stays open between accesses (every read opens,
        reads and closes), so nothing else is held once this returns."""
        self._closed = True

    def __enter__(self) -> "LazyModel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- computing one tensor --------------------------------------------------------
    def _compute(self, t: _OutTensor) -> np.ndarray:
        """All elements of ``t`` as raw bits, chunk by chunk into one array (the tensor plus a chunk)."""
        bits = np.empty(t.numel, dtype=uint_dtype(t.dtype))
        ranges = chunk_ranges(t.numel)

        def put(index: int, piece: np.ndarray) -> None:
            start, count = ranges[index]
            bits[start : start + count] = piece

        if self.needs_proof(t.name):
            self.prove(t.name, put)
        else:
            for index in range(len(ranges)):
                put(index, self.chunk_bits(t.name, index))
        return bits

    def chunk_bits(self, name: str, index: int) -> np.ndarray:
        """Chunk ``index`` (of CHUNK_ELEMENTS elements) of tensor ``name``, as raw bits; not proven
        here: a caller serving chunks calls ``prove`` first where ``needs_proof`` says so."""
        if self._closed:
            raise ValueError(f"tensor {name!r}: the lazy model was closed")
        if name in self._failed:  # apply's check failed on it: none of its bytes are handed out
            raise VerificationError(_differs(name))
        t = self._plan[name]
        start, count = chunk_ranges(t.numel)[index]
        return _chunk(t, start, count, self._device)[1]

    def needs_proof(self, name: str) -> bool:
        """Whether apply would check tensor ``name`` against the post model and that has not run yet."""
        t = self._plan[name]
        return (t.expect is not None and name not in self._settled
                and (not self._other_base or name in self._known_original))

    def prove(self, name: str, on_chunk: Callable[[int, np.ndarray], None] | None = None) -> None:
        """Compute every chunk of ``name`` (handed to ``on_chunk``), hashing them: apply's check.
        Raises VerificationError where the output differs from the post model on the original base."""
        t = self._plan[name]
        hashes = []
        for index in range(len(chunk_ranges(t.numel))):
            piece = self.chunk_bits(name, index)
            hashes.append(chunk_hash(piece))
            if on_chunk is not None:
                on_chunk(index, piece)
        self._settle(t, hashes)

    def _settle(self, t: _OutTensor, out_hashes: list[bytes]) -> None:
        """apply's proof for one tensor: its output digest, then its base digest where a mismatch needs it."""
        proof = _Proof(t, len(out_hashes), mode="out", known_original=t.name in self._known_original)
        proof.out = out_hashes
        if proof.step() == "base":
            proof.base = [_base_chunk_hash(t, s, c, None) for s, c in chunk_ranges(t.numel)]
            proof.step()
        if proof.failed:
            self._failed.add(t.name)
            raise VerificationError(_differs(t.name))
        with self._lock:
            self._settled.add(t.name)
            if proof.other_base:
                self._other_base = True
            if proof.verified:
                self._verified.add(t.name)

    def _as_tensor(self, bits: np.ndarray, t: _OutTensor) -> Any:
        if self._framework == "np":
            if t.dtype not in _NUMPY_DTYPES:
                raise FormatError(f"tensor {t.name!r} is {t.dtype}, which numpy cannot hold; open the model with framework='pt'")
            return bits.view(_NUMPY_DTYPES[t.dtype]).reshape(t.shape)
        import torch

        signed = bits.view(np.dtype(f"i{bits.dtype.itemsize}")) if bits.dtype.itemsize > 1 else bits
        return torch.from_numpy(signed).view(_torch_dtypes()[t.dtype]).reshape(t.shape)


def _differs(name: str) -> str:
    return f"tensor {name!r}: the output differs from the post model although the base is the original one"


def open_model(artifacts: Sequence[str | os.PathLike | Artifact], base: str | os.PathLike, *,
               alphas: Sequence[float] | None = None, framework: str = "pt", device: str = "cpu",
               quiet: bool = False) -> LazyModel:
    """The model ``base + Σ alphas[i] * Δ[i]`` as a mapping of tensors computed on access.

    Artifacts are folders or registry references, as for apply. The base is pre-flighted
    against every manifest here, before any blob is decoded: an incompatible base fails
    now, not at the first tensor.
    """
    arts, alphas, model, plan = prepare(artifacts, base, alphas, quiet)
    return LazyModel(arts, alphas, model, plan, framework, device)


def load_transformers_model(artifacts: Sequence[str | os.PathLike | Artifact], base: str | os.PathLike, *,
                            alphas: Sequence[float] | None = None, model_class: type | None = None,
                            dtype: "torch.dtype | None" = None, quiet: bool = False) -> "torch.nn.Module":
    """A ``transformers`` model of base + deltas, each parameter computed once into its place.

    The model is built with its parameters on the meta device (no memory), then each
    parameter is replaced by its computed tensor: the peak is the model plus a chunk,
    never the model twice as with ``apply`` then ``from_pretrained``. ``model_class``
    defaults to the config's architecture (a transformers class; remote code is never
    imported). ``dtype`` None keeps each tensor's stored dtype, as ``from_pretrained(...,
    dtype="auto")`` does. Tied weights are tied after loading, as from_pretrained ties them.
    """
    with open_model(artifacts, base, alphas=alphas, quiet=quiet) as tensors:
        config = _transformers_config(tensors.config)
        cls = model_class or _architecture(config)
        with _parameters_on_meta():
            model = cls._from_config(config) if hasattr(cls, "_from_config") else cls.from_config(config)
        targets = _checkpoint_names(model, tensors)
        for name, target in targets.items():
            _assign(model, target, tensors[name], dtype)
        model.tie_weights()
        _set_generation_config(model, tensors.artifacts[0])
    left = [n for n, p in model.named_parameters() if p.is_meta]
    if left:
        raise ModelError(f"{cls.__name__} has parameters the ParamΔ model lacks ({', '.join(left[:4])}); "
                         "pass the model_class the model was saved from")
    return model.eval()


def _set_generation_config(model, art: Artifact) -> None:
    """The post model's generation_config.json (carried by the delta), as from_pretrained reads it from apply's folder."""
    carried = next((f for f in art.manifest.files if f.path == "generation_config.json"), None)
    if carried is None or not (hasattr(model, "can_generate") and model.can_generate()):
        return
    import json

    from transformers import GenerationConfig

    data = art.read_carried(carried)  # lossy: v2 carried files are compressed
    check_carried_content(carried.path, data)
    model.generation_config = GenerationConfig.from_dict(json.loads(data))


def _transformers_config(config: dict):
    """The config from_pretrained would read from apply's config.json (written to a temp folder and read back)."""
    import json
    import tempfile

    from transformers import AutoConfig

    if not config:
        raise ModelError("the base model has no config.json; transformers needs one to build the model")
    with tempfile.TemporaryDirectory(prefix="paramdelta-config-") as folder:
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(config, f)
        return AutoConfig.from_pretrained(folder)


def _architecture(config) -> type:
    import transformers

    names = getattr(config, "architectures", None) or []
    for name in names:
        cls = getattr(transformers, name, None)
        if isinstance(cls, type):
            return cls
    return transformers.AutoModel


class _parameters_on_meta:
    """Build modules with their parameters on the meta device and their buffers on the CPU.

    What accelerate's ``init_empty_weights(include_buffers=False)`` does (accelerate is not
    a dependency): buffers such as rotary frequencies or position ids are computed by the
    modules' constructors and are not in checkpoints, so they must be real; parameters
    are all replaced by the checkpoint's, so allocating them would be the model twice.
    """

    def __enter__(self) -> None:
        import torch

        self._register = register = torch.nn.Module.register_parameter

        def on_meta(module, name, param):
            register(module, name, param)
            if param is not None:
                module._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

        torch.nn.Module.register_parameter = on_meta

    def __exit__(self, *exc: object) -> None:
        import torch

        torch.nn.Module.register_parameter = self._register


def _checkpoint_names(model, tensors: LazyModel) -> dict[str, str]:
    """Checkpoint tensor name -> the model's state-dict name, with the base-model prefix added
    or dropped as from_pretrained does (a BertModel loads a checkpoint saved with 'bert.')."""
    expected = set(model.state_dict().keys())
    prefix = getattr(model, "base_model_prefix", "") or ""
    targets = {}
    for name in tensors:
        for candidate in (name, name.removeprefix(prefix + ".") if prefix else name, f"{prefix}.{name}" if prefix else name):
            if candidate in expected:
                targets[name] = candidate
                break
    return targets


def _assign(model, target: str, value: "torch.Tensor", dtype: "torch.dtype | None") -> None:
    """Put ``value`` in the model at ``target`` (a parameter or a persistent buffer), checking its shape."""
    import torch

    module_name, _, attr = target.rpartition(".")
    module = model.get_submodule(module_name)
    current = module._parameters.get(attr) if attr in module._parameters else module._buffers.get(attr)
    if current is not None and tuple(current.shape) != tuple(value.shape):
        raise ModelError(f"tensor {target!r}: the ParamΔ model has shape {list(value.shape)}, "
                         f"{type(model).__name__} expects {list(current.shape)}")
    if dtype is not None and value.is_floating_point():
        value = value.to(dtype)
    if attr in module._parameters:
        module._parameters[attr] = torch.nn.Parameter(value, requires_grad=value.is_floating_point())
    else:
        module._buffers[attr] = value


# -- the output folder, file by file (what `paramdelta mount` serves) -----------------------

PLACEHOLDER_DIGEST = "sha256:" + "0" * 64  # same length as any digest: sizes paramdelta.json before hashing
READ_AHEAD = 2  # chunks computed ahead of a reader, on as many threads (two cores overlap compute and copying)


class ChunkCache:
    """Computed chunks (raw bits), least recently used dropped first, at most ``max_bytes`` in all."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int]) -> np.ndarray | None:
        with self._lock:
            bits = self._items.get(key)
            if bits is not None:
                self._items.move_to_end(key)
            return bits

    def put(self, key: tuple[str, int], bits: np.ndarray) -> None:
        if bits.nbytes > self.max_bytes:
            return  # bigger than the whole cache: served, not kept
        with self._lock:
            old = self._items.pop(key, None)
            self._bytes -= old.nbytes if old is not None else 0
            self._items[key] = bits
            self._bytes += bits.nbytes
            while self._bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= dropped.nbytes

    @property
    def nbytes(self) -> int:
        return self._bytes


@dataclass(frozen=True)
class _Span:
    """One tensor's bytes inside a shard file."""

    start: int  # absolute offset in the file
    end: int
    name: str
    itemsize: int


class ModelFolder:
    """apply's output folder, computed on read: its files, their sizes, and any byte range of them."""

    def __init__(self, lazy: LazyModel, shard_size: int | str, cache_bytes: int | str):
        self.lazy = lazy
        self.cache = ChunkCache(parse_size(cache_bytes))
        self.shards = plan_shards([(t.name, t.dtype, t.shape) for t in lazy.plan], parse_size(shard_size))
        self._spans = {s.name: self._spans_of(s) for s in self.shards}
        self._starts = {name: [span.start for span in spans] for name, spans in self._spans.items()}
        self.files: dict[str, bytes | ShardPlan | None] = {s.name: s for s in self.shards}
        index = index_text(self.shards)
        if index is not None:
            self.files[INDEX_FILE] = index.encode()
        if lazy.config:
            self.files["config.json"] = config_text(lazy.config).encode()
        self._add_carried_files()
        self.files[PROVENANCE_FILE] = None  # computed when first needed (see _provenance)
        self.dirs = {str(p) for rel in self.files for p in PurePosixPath(rel).parents if str(p) != "."}
        self._tensor_locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self._provenance_lock = threading.Lock()
        # Reading ahead: each chunk's successor in file order (shard by shard, tensor by tensor).
        order = [(span.name, i) for shard in self.shards for span in self._spans[shard.name]
                 for i in range(-(-(span.end - span.start) // (CHUNK_ELEMENTS * span.itemsize)))]
        self._successor = dict(zip(order, order[1:]))
        self._previous = dict(zip(order[1:], order))
        self._ahead: dict[tuple[str, int], Future] = {}
        self._ahead_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(READ_AHEAD, thread_name_prefix="paramdelta-ahead")

    def _spans_of(self, shard: ShardPlan) -> list[_Span]:
        spans = []
        for name, start in shard.offsets.items():
            dtype, shape = self.lazy.dtype_and_shape(name)
            nbytes = ITEMSIZE[dtype] * math.prod(shape)
            spans.append(_Span(start, start + nbytes, name, ITEMSIZE[dtype]))
        return sorted(spans, key=lambda s: s.start)

    def _add_carried_files(self) -> None:
        """The post model's tokenizer and template files, checked as apply checks them."""
        first = self.lazy.artifacts[0]
        for f in first.manifest.files:
            if f.path in self.files or f.path == PROVENANCE_FILE:
                raise FormatError(f"carried file {f.path!r} collides with a file apply writes")
            data = first.read_carried(f)  # lossy: v2 carried files are compressed
            check_carried_content(f.path, data)
            self.files[f.path] = data

    # -- sizes and bytes ---------------------------------------------------------------
    def size(self, rel: str) -> int:
        entry = self.files[rel]
        if isinstance(entry, ShardPlan):
            return entry.size
        if entry is None:
            return len(self._provenance(sized_only=True))
        return len(entry)

    def read(self, rel: str, offset: int, size: int) -> bytes:
        entry = self.files[rel]
        if isinstance(entry, ShardPlan):
            return self._read_shard(entry, offset, size)
        data = self._provenance() if entry is None else entry
        return data[offset : offset + size]

    def _read_shard(self, shard: ShardPlan, offset: int, size: int) -> bytes:
        """Bytes [offset, offset+size) of a shard: its header, then slices of computed chunks
        (views, copied once into the answer; the tensors found by bisection, not a scan)."""
        end = min(shard.size, offset + size)
        parts: list[bytes | memoryview] = [shard.head[offset:end]] if offset < len(shard.head) else []
        spans = self._spans[shard.name]
        first = max(0, bisect.bisect_right(self._starts[shard.name], offset) - 1)
        for span in spans[first:]:
            if span.start >= end:
                break
            if span.end > offset and span.end > span.start:
                parts += self._tensor_bytes(span, max(offset, span.start) - span.start, min(end, span.end) - span.start)
        return bytes(parts[0]) if len(parts) == 1 else b"".join(parts)

    def _tensor_bytes(self, span: _Span, lo: int, hi: int) -> list[memoryview]:
        """Bytes [lo, hi) of one tensor, as views of the chunks that hold them."""
        chunk_bytes = CHUNK_ELEMENTS * span.itemsize
        parts = []
        for index in range(lo // chunk_bytes, (hi - 1) // chunk_bytes + 1):
            raw = memoryview(self.chunk(span.name, index)).cast("B")
            first = index * chunk_bytes
            parts.append(raw[max(lo, first) - first : min(hi, first + len(raw)) - first])
        return parts

    def chunk(self, name: str, index: int) -> np.ndarray:
        """Chunk ``index`` of tensor ``name``: from the cache, else computed (the whole tensor
        proven first where apply would prove it; one thread proves, the others wait).

        A reader that moved on from the chunk before this one (from_pretrained, cp, a scan)
        gets the next chunks in file order computed ahead on other threads while this one is
        copied out; a random reader (mmap'd pages here and there) gets no computing ahead.
        """
        key = (name, index)
        bits = self.cache.get(key)
        if bits is None:
            ahead = self._ahead.get(key)
            if ahead is not None:
                ahead.exception()  # wait; a failure there is raised again by _load below
                bits = self.cache.get(key)
            if bits is None:
                bits = self._load(name, index)
        previous = self._previous.get(key)
        if previous is not None and self.cache.get(previous) is not None:  # a sequential reader: read ahead
            self._read_ahead(key)
        return bits

    def _load(self, name: str, index: int) -> np.ndarray:
        key = (name, index)
        if self.lazy.needs_proof(name):
            with self._tensor_lock(name):
                if self.lazy.needs_proof(name):
                    self._prove(name)
            bits = self.cache.get(key)
            if bits is not None:
                return bits
        bits = self.lazy.chunk_bits(name, index)
        self.cache.put(key, bits)
        return bits

    def _read_ahead(self, key: tuple[str, int]) -> None:
        """Compute the next READ_AHEAD chunks in file order in the background, where not cached or under way."""
        for _ in range(READ_AHEAD):
            key = self._successor.get(key)
            if key is None:
                return
            with self._ahead_lock:
                if key in self._ahead or self.cache.get(key) is not None:
                    continue
                future = self._pool.submit(self._load, *key)
                self._ahead[key] = future
            future.add_done_callback(lambda _, k=key: self._ahead.pop(k, None))

    def close(self) -> None:
        """Stop computing ahead (chunks under way finish)."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _prove(self, name: str) -> None:
        """apply's check of one tensor; its chunks enter the cache only once it passed (as many
        as the cache holds), so no reader is ever served a chunk of a tensor that failed it."""
        proven: list[tuple[int, np.ndarray]] = []
        room = self.cache.max_bytes

        def keep(index: int, piece: np.ndarray) -> None:
            nonlocal room
            if piece.nbytes <= room:
                proven.append((index, piece))
                room -= piece.nbytes

        self.lazy.prove(name, keep)
        for index, piece in proven:
            self.cache.put((name, index), piece)

    def _tensor_lock(self, name: str) -> threading.Lock:
        with self._locks_lock:
            return self._tensor_locks.setdefault(name, threading.Lock())

    # -- paramdelta.json -------------------------------------------------------------------
    def _provenance(self, sized_only: bool = False) -> bytes:
        """paramdelta.json as apply writes it. Its size is known without hashing once the output
        cannot be exact (digests have one length); else, and for its bytes, every shard is hashed."""
        with self._provenance_lock:
            cached = getattr(self, "_provenance_data", None)
            if cached is not None:
                return cached
            if sized_only and not self.lazy.exact_possible:
                return self._provenance_record({s.name: PLACEHOLDER_DIGEST for s in self.shards}, False)
            digests = {s.name: self._shard_digest(s) for s in self.shards}
            self._provenance_data = self._provenance_record(digests, self.lazy.verified_exact)
            return self._provenance_data

    def _provenance_record(self, shard_digests: dict[str, str], verified: bool) -> bytes:
        files = {}
        for rel in sorted((r for r in self.files if r != PROVENANCE_FILE), key=PurePosixPath):
            entry = self.files[rel]
            if isinstance(entry, ShardPlan):
                files[rel] = {"sha256": shard_digests[rel], "size": entry.size}
            else:
                files[rel] = {"sha256": "sha256:" + hashlib.sha256(entry).hexdigest(), "size": len(entry)}
        lazy = self.lazy
        return provenance_bytes(lazy.artifacts, lazy.alphas, lazy.base, verified, files)

    def _shard_digest(self, shard: ShardPlan) -> str:
        sha = hashlib.sha256(shard.head)
        for span in self._spans[shard.name]:
            chunk_bytes = CHUNK_ELEMENTS * span.itemsize
            for index in range(-(-(span.end - span.start) // chunk_bytes)):  # none for an empty tensor
                sha.update(memoryview(self.chunk(span.name, index)).cast("B"))
        return "sha256:" + sha.hexdigest()
