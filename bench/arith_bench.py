"""The arithmetic kernel: numpy (deltaformat.arith) against the torch code it replaced.

Per 2^22-element chunk (a bf16 base, an fp32 Δ, a bf16 output, as apply combines
chunks): milliseconds per chunk for α = 1 (a plain fp32 add) and α = 0.7 (the fused
multiply-add), on one thread and on two threads each combining its own chunks, and
the ratio numpy / torch. Then a whole ``deltaformat.apply`` of a synthetic bf16 model
on a new base (α = 1), once with each kernel, as CPU seconds (all threads) per GB of
output, and the kernel's own thread CPU seconds per GB. torch is the reference it replaced: blocks of 2^18 elements, one intra-op
thread per worker, ``add_(d, alpha=a)`` then a copy into the output dtype.

Writes its section of BENCHMARKS.md between ``<!-- kernel:begin -->`` and ``<!-- kernel:end -->``.

Usage: python -m bench.arith_bench [--numel-apply N] [--repeats R] [--no-write]
"""

from __future__ import annotations

import argparse
import importlib
import json
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

import deltaformat
from deltaformat import arith
from deltaformat.codec.base import Materialized

APPLY_MODULE = importlib.import_module("deltaformat.engine")  # where apply calls ``combine``

CHUNK = 1 << 22
TORCH_BLOCK = 1 << 18


def torch_combine(base_bits, base_dtype, deltas, out_dtype, device="cpu"):
    """The CPU code deltaformat.arith ran before numpy replaced it (a ``Decoded`` Δ filled a block at a time)."""
    import torch

    torch.set_num_threads(1)  # what deltaformat._parallel set for every worker
    n = base_bits.size
    out = np.empty(n, dtype=np.uint16 if out_dtype != "F32" else np.uint32)
    base_t, out_t = arith.bits_to_torch(base_bits, base_dtype), arith.bits_to_torch(out, out_dtype)
    block = min(n, TORCH_BLOCK)
    sources = [(a, d.values if isinstance(d, Materialized) else d, np.empty(block, np.uint32)) for a, d in deltas]
    acc = torch.empty(block, dtype=torch.float32)
    for s in range(0, n, TORCH_BLOCK):
        e = min(n, s + TORCH_BLOCK)
        a = acc[: e - s]
        a.copy_(base_t[s:e])
        for alpha, d, buf in sources:
            if isinstance(d, np.ndarray):
                t = arith.bits_to_torch(d[s:e], "F32")
            else:
                d.fill(s, buf[: e - s])
                t = arith.bits_to_torch(buf[: e - s], "F32")
            a.add_(t, alpha=alpha)
        out_t[s:e].copy_(a)
    return out


def bf16_bits(x: np.ndarray) -> np.ndarray:
    return arith.cast(x.astype(np.float32).view(np.uint32), "F32", "BF16")


def make_chunks(k: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(k):
        base = bf16_bits(rng.standard_normal(CHUNK, dtype=np.float32) * 0.02)
        delta = (rng.standard_normal(CHUNK, dtype=np.float32) * 1e-4).view(np.uint32)
        out.append((base, delta))
    return out


def time_kernel(fn, chunks, alpha: float, threads: int, repeats: int) -> float:
    """Best wall milliseconds per chunk over ``repeats`` rounds of every chunk."""
    def one(c):
        return fn(c[0], "BF16", [(alpha, c[1])], "BF16")

    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, chunks))  # warm: buffers, page faults
        for _ in range(repeats):
            t = time.perf_counter()
            list(pool.map(one, chunks))
            best = min(best, (time.perf_counter() - t) / len(chunks))
    return best * 1e3


def kernel_rows(repeats: int) -> list[dict]:
    chunks = make_chunks(4)
    rows = []
    for alpha in (1.0, 0.7):
        for threads in (1, 2):
            t_np = time_kernel(arith.combine, chunks, alpha, threads, repeats)
            t_torch = time_kernel(torch_combine, chunks, alpha, threads, repeats)
            rows.append({"alpha": alpha, "threads": threads, "numpy_ms": t_np, "torch_ms": t_torch, "ratio": t_np / t_torch})
    return rows


def make_model(folder: Path, numel: int, seed: int) -> None:
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    rows = numel // 4096
    tensors = {f"layer{i}.weight": (torch.randn(rows // 4, 4096, generator=g) * 0.02).to(torch.bfloat16) for i in range(4)}
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "torch_dtype": "bfloat16"}))


def perturb(src: Path, dst: Path, seed: int) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    g = torch.Generator().manual_seed(seed)
    t = {k: (v.float() + torch.randn(v.shape, generator=g) * 2e-4).to(torch.bfloat16) for k, v in load_file(src / "model.safetensors").items()}
    dst.mkdir(parents=True)
    save_file(t, str(dst / "model.safetensors"), metadata={"format": "pt"})
    (dst / "config.json").write_text((src / "config.json").read_text())


class ThreadCPU:
    """Wraps a kernel, summing the thread CPU time of its calls (other processes' load does not count)."""

    def __init__(self, kernel):
        self.kernel, self.seconds, self.lock = kernel, 0.0, threading.Lock()

    def __call__(self, *args, **kwargs):
        t = time.thread_time()
        try:
            return self.kernel(*args, **kwargs)
        finally:
            with self.lock:
                self.seconds += time.thread_time() - t


def apply_rows(numel: int, repeats: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="arith-bench-") as tmp:
        d = Path(tmp)
        make_model(d / "base", numel, 0)
        perturb(d / "base", d / "post", 1)
        perturb(d / "base", d / "new", 2)
        deltaformat.extract(d / "base", d / "post", d / "delta", quiet=True)
        gb = numel * 2 / 1e9
        for name, kernel in (("numpy", arith.combine), ("torch", torch_combine)):
            timed = ThreadCPU(kernel)
            APPLY_MODULE.combine = timed
            best_cpu, best_wall, best_kernel = float("inf"), float("inf"), float("inf")
            for r in range(repeats + 1):  # the first run warms the page cache
                out = d / f"out-{name}-{r}"
                timed.seconds = 0.0
                c, t = time.process_time(), time.perf_counter()
                deltaformat.apply([d / "delta"], d / "new", out, quiet=True)
                cpu, wall = time.process_time() - c, time.perf_counter() - t
                if r:
                    best_cpu, best_wall, best_kernel = min(best_cpu, cpu), min(best_wall, wall), min(best_kernel, timed.seconds)
            rows.append({"kernel": name, "cpu_s_per_gb": best_cpu / gb, "wall_s_per_gb": best_wall / gb,
                         "kernel_cpu_s_per_gb": best_kernel / gb})
        APPLY_MODULE.combine = arith.combine
        same = all((d / f"out-numpy-{repeats}" / f).read_bytes() == (d / f"out-torch-{repeats}" / f).read_bytes()
                   for f in ("model.safetensors",))
        rows.append({"outputs_identical": same})
    return rows


def render(kernel: list[dict], apply: list[dict], numel: int, machine: dict) -> str:
    """The BENCHMARKS.md section, every figure from this run."""
    lines = ["## The CPU arithmetic kernel: numpy against the torch code it replaced (`python -m bench.arith_bench`)", "",
             f"{machine['date']}; {machine['cpu']}, {machine['usable_cores']} usable cores, Python {machine['python']}, "
             f"numpy {machine['packages']['numpy']}, torch {machine['packages']['torch']}; load average at start "
             f"{machine['load_start'][0]:.1f}. Since issue #11 the CPU path computes with numpy, so a client-only "
             "install needs no torch and a command does not pay torch's import; `--device cuda` still runs torch. "
             "The same inputs through both kernels, interleaved in one run.", "",
             f"Per chunk of {CHUNK} elements (bf16 base, fp32 Δ, bf16 out), best of the repeats:", "",
             "| α | threads | numpy ms | torch ms | numpy / torch |", "|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['alpha']} | {r['threads']} | {r['numpy_ms']:.2f} | {r['torch_ms']:.2f} | **{r['ratio']:.2f}×** |" for r in kernel]
    by = {r["kernel"]: r for r in apply if "kernel" in r}
    same = next(r["outputs_identical"] for r in apply if "outputs_identical" in r)
    n, t = by["numpy"], by["torch"]
    lines += ["", f"A whole `deltaformat.apply` of a synthetic bf16 model ({numel / 1e6:.0f} M elements) on a new base, α = 1, "
              f"in this process (torch already imported, so start-up is not in it); outputs bit-identical: {same}.", "",
              "| kernel | CPU s/GB (all threads) | of which the kernel | wall s/GB |", "|---|---:|---:|---:|"]
    lines += [f"| {r['kernel']} | {r['cpu_s_per_gb']:.2f} | {r['kernel_cpu_s_per_gb']:.2f} | {r['wall_s_per_gb']:.2f} |" for r in (n, t)]
    extra_wall = n["wall_s_per_gb"] - t["wall_s_per_gb"]
    lines += ["", f"- numpy / torch, whole apply: {n['cpu_s_per_gb'] / t['cpu_s_per_gb']:.2f}× the CPU, "
              f"{n['wall_s_per_gb'] / t['wall_s_per_gb']:.2f}× the wall time ({extra_wall:+.2f} s per GB of output).",
              "- α ≠ 1 costs numpy more than torch: fp32's fused multiply-add is emulated in float64 (exact product, "
              "one rounding, corrected on ties), where torch's kernel fuses it in C; α = 1, the common case, is a plain fp32 add.",
              "- What a user's command saves is start-up: the `apply` line of the start-up section shows torch's import, "
              "paid on every command before, against the extra per GB here."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--numel-apply", type=int, default=1 << 27, help="elements of the synthetic model (bf16)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-write", action="store_true", help="print the section only")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "BENCHMARKS.md")
    args = ap.parse_args()
    from paramdelta_dev.machine import describe
    from paramdelta_dev.report import write_section

    machine = describe(("numpy", "torch"))
    kernel = kernel_rows(args.repeats)
    apply = apply_rows(args.numel_apply, max(1, args.repeats // 2))
    text = render(kernel, apply, args.numel_apply, machine)
    print(text)
    if not args.no_write:
        write_section(args.out, "kernel", text)


if __name__ == "__main__":
    main()
