"""Use a delta without writing a merged copy: tensors of the ParamΔ model computed on access.

    with deltaformat.open_model(["llama3-inst.delta"], "llama3.1-base") as tensors:
        w = tensors["model.layers.0.mlp.up_proj.weight"]   # computed now, from base + Δ

    model = deltaformat.lazy.load_transformers_model(["llama3-inst.delta"], "llama3.1-base")

Each tensor is exactly what ``apply`` would write for it (same dtype, shape and bytes):
the open, the pre-flight and the plan are apply's own (``apply.prepare``), and each
chunk is computed as apply's own ``engine.compute_chunk`` computes it, in its place in the
tensor. Nothing is cached: computing a tensor holds that tensor plus one chunk's decoding,
and the caller decides what to keep.

Values are torch tensors by default (``framework="pt"``, as safetensors' ``safe_open``
names it): torch is what can hold bf16 and fp8, the dtypes models ship in, and what
models are run with (``pip install 'paramdelta[torch]'``). ``framework="np"`` gives numpy
arrays for the dtypes numpy has, without torch, and refuses BF16/F8 tensors by name
rather than hand out raw bits.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np

from deltaformat._parallel import release_free_memory, scratch
from deltaformat.apply import prepare
from deltaformat.arith import combine
from deltaformat.artifact import Artifact
from deltaformat.chunking import chunk_ranges
from deltaformat.digests import chunk_hash
from deltaformat.engine import compute_chunk, delta_range
from deltaformat.errors import FormatError, ModelError, VerificationError
from deltaformat.manifest import check_carried_content
from deltaformat.models import ModelSource
from deltaformat.plan import OutTensor
from deltaformat.proof import HashMode, Proof, base_chunk_hash, probe_other_base
from deltaformat.rawbits import uint_dtype
from deltaformat.sidefiles import output_config

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedModel

FRAMEWORKS = ("pt", "np")
# After computing a tensor this big, its chunks' decoding buffers (about twice a chunk) are handed
# back to the system; below it they are small, and glibc reuses them for the next tensors.
RELEASE_AFTER_BYTES = 1 << 20
# safetensors dtypes numpy represents (BF16 and the F8s it has no type for).
_NUMPY_DTYPES = {
    "BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "I16": np.int16, "U16": np.uint16, "F16": np.float16,
    "I32": np.int32, "U32": np.uint32, "F32": np.float32, "I64": np.int64, "U64": np.uint64, "F64": np.float64,
}


@cache
def _torch_dtypes() -> dict[str, torch.dtype]:
    import torch

    return {
        "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
        "I16": torch.int16, "U16": torch.uint16, "F16": torch.float16, "BF16": torch.bfloat16,
        "I32": torch.int32, "U32": torch.uint32, "F32": torch.float32, "I64": torch.int64, "U64": torch.uint64, "F64": torch.float64,
    }


class LazyModel(Mapping[str, Any]):  # torch tensors or numpy arrays: the framework is chosen at run time
    """Read-only mapping of apply's output tensor names (in apply's order) to tensors computed on access.

    A tensor apply would check against the post model's digest (original base, one
    artifact at alpha 1) is checked here too, each time it is computed, and a mismatch
    on the original base raises ``VerificationError`` as apply does. ``verified_exact``
    says whether every tensor was computed and proven to be the post model's.
    """

    def __init__(self, arts: list[Artifact], alphas: list[float], model: ModelSource, plan: list[OutTensor],
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
        probes = {t.name: Proof(t, len(chunk_ranges(t.numel))) for t in plan}
        self._other_base = probe_other_base(plan, probes)
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

    def __enter__(self) -> LazyModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- computing one tensor --------------------------------------------------------
    def _compute(self, t: OutTensor) -> np.ndarray:
        """All elements of ``t`` as raw bits, each chunk computed in its place in one array where
        it can be (see ``_chunk_into``): the tensor plus the chunk's decoding, not plus a chunk."""
        bits = np.empty(t.numel, dtype=uint_dtype(t.dtype))
        if self.needs_proof(t.name):
            self.prove(t.name, into=bits)
        else:
            for index in range(len(chunk_ranges(t.numel))):
                self.chunk_bits(t.name, index, into=bits)
        if bits.nbytes >= RELEASE_AFTER_BYTES:
            # Freed, their pages would stay in the process under the tensors allocated next, and
            # the caller keeps every tensor: measured 1.33x the model's bytes at the peak for MiniLM, 1.21x with this.
            release_free_memory()
        return bits

    def chunk_bits(self, name: str, index: int, into: np.ndarray | None = None) -> np.ndarray:
        """Chunk ``index`` (of CHUNK_ELEMENTS elements) of tensor ``name``, as raw bits; not proven
        here: a caller serving chunks calls ``prove`` first where ``needs_proof`` says so.
        ``into``: the whole tensor's array, where the chunk is written (and a view of it returned)."""
        if self._closed:
            raise ValueError(f"tensor {name!r}: the lazy model was closed")
        if name in self._failed:  # apply's check failed on it: none of its bytes are handed out
            raise VerificationError(_differs(name))
        t = self._plan[name]
        start, count = chunk_ranges(t.numel)[index]
        if into is None:
            return compute_chunk(t, start, count, self._device)[1]
        place = into[start : start + count]
        if self._device != "cpu" or not _chunk_into(t, start, count, place):
            place[...] = compute_chunk(t, start, count, self._device)[1]
        return place

    def needs_proof(self, name: str) -> bool:
        """Whether apply would check tensor ``name`` against the post model and that has not run yet."""
        t = self._plan[name]
        return (t.expect is not None and name not in self._settled
                and (not self._other_base or name in self._known_original))

    def prove(self, name: str, on_chunk: Callable[[int, np.ndarray], None] | None = None, into: np.ndarray | None = None) -> None:
        """Compute every chunk of ``name`` (handed to ``on_chunk``; written into ``into`` when given),
        hashing them: apply's check. Raises VerificationError where the output differs from the
        post model on the original base."""
        t = self._plan[name]
        hashes: list[bytes | None] = []
        for index in range(len(chunk_ranges(t.numel))):
            piece = self.chunk_bits(name, index, into)
            hashes.append(chunk_hash(piece))
            if on_chunk is not None:
                on_chunk(index, piece)
        self._settle(t, hashes)

    def _settle(self, t: OutTensor, out_hashes: list[bytes | None]) -> None:
        """apply's proof for one tensor: its output digest, then its base digest where a mismatch needs it."""
        proof = Proof(t, len(out_hashes), mode=HashMode.OUT, known_original=t.name in self._known_original)
        proof.out = out_hashes
        if proof.step() == "base":
            proof.base = [base_chunk_hash(t, s, c, None) for s, c in chunk_ranges(t.numel)]
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

    def _as_tensor(self, bits: np.ndarray, t: OutTensor) -> Any:
        if self._framework == "np":
            if t.dtype not in _NUMPY_DTYPES:
                raise FormatError(f"tensor {t.name!r} is {t.dtype}, which numpy cannot hold; open the model with framework='pt'")
            return bits.view(_NUMPY_DTYPES[t.dtype]).reshape(t.shape)
        import torch

        signed = bits.view(np.dtype(f"i{bits.dtype.itemsize}")) if bits.dtype.itemsize > 1 else bits
        return torch.from_numpy(signed).view(_torch_dtypes()[t.dtype]).reshape(t.shape)


def _chunk_into(t: OutTensor, start: int, count: int, place: np.ndarray) -> bool:
    """Output elements [start, start+count) of ``t`` written into ``place`` (CPU), as
    ``engine.compute_chunk`` computes them; False, nothing written, outside the usual case.

    The usual case: the base covers the chunk and is changed by Δ, without a patch. Then
    the base's bits are read straight into ``place`` (when its elements are as wide as the
    output's) and the sum is written over them, block by block: no chunk-sized result array
    and no chunk-sized base buffer besides the tensor itself.
    """
    if t.base is None or not t.terms or t.patch is not None or min(t.base.numel, t.numel) - start < count:
        return False
    deltas = [(term.alpha, delta_range(term, start, count)) for term in t.terms]
    if t.base.itemsize == place.itemsize:
        base_bits = t.base.read(start, count, place.view(uint_dtype(t.base.dtype)))
    else:
        base_bits = t.base.read(start, count, scratch("base", count * t.base.itemsize).view(uint_dtype(t.base.dtype)))
    combine(base_bits, t.base.dtype, deltas, t.dtype, "cpu", out=place)
    return True


def _differs(name: str) -> str:
    return f"tensor {name!r}: the output differs from the post model although the base is the original one"


def open_model(artifacts: Sequence[str | os.PathLike[str] | Artifact], base: str | os.PathLike[str], *,
               alphas: Sequence[float] | None = None, framework: str = "pt", device: str = "cpu",
               quiet: bool = False) -> LazyModel:
    """The model ``base + Σ alphas[i] * Δ[i]`` as a mapping of tensors computed on access.

    Artifacts are folders or registry references, as for apply. The base is pre-flighted
    against every manifest here, before any blob is decoded: an incompatible base fails
    now, not at the first tensor.
    """
    arts, alphas, model, plan = prepare(artifacts, base, alphas, quiet)
    return LazyModel(arts, alphas, model, plan, framework, device)


def load_transformers_model(artifacts: Sequence[str | os.PathLike[str] | Artifact], base: str | os.PathLike[str], *,
                            alphas: Sequence[float] | None = None, model_class: type | None = None,
                            dtype: torch.dtype | None = None, quiet: bool = False) -> torch.nn.Module:
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
            model = _build(cls, config)
        targets = _checkpoint_names(model, tensors)
        for name, target in targets.items():
            _assign(model, target, tensors[name], dtype)
        model.tie_weights()
        _set_generation_config(model, tensors.artifacts[0])
    left = [n for n, p in model.named_parameters() if p.is_meta]
    if left:
        raise ModelError(f"{cls.__name__} has parameters the ParamΔ model lacks ({', '.join(left[:4])}); "
                         "pass the model_class the model was saved from")
    module: torch.nn.Module = model  # eval() as torch types it (transformers' own override is untyped)
    return module.eval()


def _build(cls: type, config: PretrainedConfig) -> PreTrainedModel:
    """An instance of ``cls`` from ``config``: ``_from_config`` where the class has it (a model class),
    else ``from_config`` (an Auto class)."""
    factory: Callable[[PretrainedConfig], PreTrainedModel] = getattr(cls, "_from_config", None) or cls.from_config  # type: ignore[attr-defined]
    return factory(config)


def _set_generation_config(model: PreTrainedModel, art: Artifact) -> None:
    """The post model's generation_config.json (carried by the delta), as from_pretrained reads it from apply's folder."""
    carried = next((f for f in art.manifest.files if f.path == "generation_config.json"), None)
    if carried is None or not (hasattr(model, "can_generate") and model.can_generate()):
        return
    import json

    from transformers import GenerationConfig

    data = art.read_carried(carried)  # lossy: v2 carried files are compressed
    check_carried_content(carried.path, data)
    model.generation_config = GenerationConfig.from_dict(json.loads(data))


def _transformers_config(config: dict[str, Any]) -> PretrainedConfig:
    """The config from_pretrained would read from apply's config.json (written to a temp folder and read back)."""
    import json
    import tempfile

    from transformers import AutoConfig

    if not config:
        raise ModelError("the base model has no config.json; transformers needs one to build the model")
    with tempfile.TemporaryDirectory(prefix="paramdelta-config-") as folder:
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(config, f)
        loaded: PretrainedConfig = AutoConfig.from_pretrained(folder)
        return loaded


def _architecture(config: PretrainedConfig) -> type:
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

        def on_meta(module: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
            register(module, name, param)
            if param is not None:
                module._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

        torch.nn.Module.register_parameter = on_meta  # type: ignore[method-assign,assignment]  # patched for the block, as accelerate does

    def __exit__(self, *exc: object) -> None:
        import torch

        torch.nn.Module.register_parameter = self._register  # type: ignore[method-assign]  # restored


def _checkpoint_names(model: torch.nn.Module, tensors: LazyModel) -> dict[str, str]:
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


def _assign(model: torch.nn.Module, target: str, value: torch.Tensor, dtype: torch.dtype | None) -> None:
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
