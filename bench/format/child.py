"""One measured operation in a child process (``python -m bench.format.child OP ARGS``): prints its wall/CPU seconds as JSON."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from bench.format.harness import fsync_tree, safetensors_files


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
        for f in safetensors_files(src):
            save_file(load_file(f), str(out / f.name), metadata={"format": "pt"})
        for f in src.iterdir():
            if f.suffix != ".safetensors":
                shutil.copy(f, out / f.name)
    elif op == "floor-extract":  # read every byte of base and post, save the artifact's bytes
        base, post, nbytes, out = Path(args[0]), Path(args[1]), int(args[2]), Path(args[3])
        buf = bytearray(64 << 20)  # reused: the cheapest possible load (no allocation, no parsing)
        for folder in (base, post):
            for f in safetensors_files(folder):
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
        res["fsync"] = fsync_tree(Path(argv[-1]))
    print(json.dumps(res))


if __name__ == "__main__":
    child(sys.argv[1:])
