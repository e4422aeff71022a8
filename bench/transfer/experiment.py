"""One seed of the experiment, the checks, and the command line (``python -m bench.transfer``)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.transfer.data import ALPHAS, RESULTS_VERSION, STRENGTHS, batches_A, batches_T, batches_wrong, make_split
from bench.transfer.evaluate import evaluate
from bench.transfer.model import Recipe, diff_state, load_base, load_folder_state, norm_of, save_model, state_of, train, with_state
from bench.transfer.paramdelta_path import _paramdelta_via_artifacts, compare_paramdelta, library_available
from bench.transfer.report import make_markdown, make_plot
from paramdelta_dev.machine import describe
from paramdelta_dev.report import write_section

REPO = Path(__file__).resolve().parents[2]
SECTION = "transfer"  # its marked section of BENCHMARKS.md

def run_seed(seed: int, args, tok, base_model, work: Path, log, sweep: bool = False) -> dict:
    from transformers import AutoModel

    t_seed = time.perf_counter()
    split = make_split(seed, n_test=args.n_test)
    rA = Recipe(steps=args.steps_a, lr=args.lr_a)
    rT = Recipe(steps=args.steps_t, lr=args.lr_t)
    strengths = STRENGTHS if sweep else (1.0,)
    res: dict = {"seed": seed, "models": {}, "distance": [], "equality": [], "timing": {}}
    sd = work / f"seed{seed}"
    sd.mkdir(parents=True, exist_ok=True)

    base_state = state_of(base_model)
    base_dir = save_model(base_model, tok, sd / "base")
    res["model_bytes"] = sum(f.stat().st_size for f in base_dir.glob("*.safetensors"))

    def ev(name, model):
        t0 = time.perf_counter()
        r = evaluate(tok, model, split)
        res["models"][name] = r
        log(f"  [seed {seed}] {name:<22} T {r['T']:.3f} ({r['T_m']:+.3f})  A {r['A']:.3f} ({r['A_m']:+.3f})  "
            f"AxT {r['AxT']:.3f} ({r['AxT_m']:+.3f})   [{time.perf_counter() - t0:.1f}s]")
        return r

    ev("base", base_model)

    # post: base fine-tuned on T
    t0 = time.perf_counter()
    post = train(base_model, tok, batches_T(split, seed, rT.batch), rT, seed)
    res["timing"]["train_T_s"] = time.perf_counter() - t0
    post_state = state_of(post)
    post_dir = save_model(post, tok, sd / "post")
    ev("post", post)
    delta = diff_state(post_state, base_state)
    delta_norm = norm_of(delta)
    del post

    for s in strengths:
        tag = "" if s == 1.0 else f"@x{s:g}"
        t0 = time.perf_counter()
        bp = train(base_model, tok, batches_A(seed + 100, rA.batch), rA, seed + 100, lr_mult=s)
        res["timing"][f"train_A{tag}_s"] = time.perf_counter() - t0
        bp_state = state_of(bp)
        bp_dir = save_model(bp, tok, sd / f"base_prime{tag}")
        r_bp = ev(f"base'{tag}", bp)
        dist = norm_of(diff_state(bp_state, base_state))

        t0 = time.perf_counter()
        pp = train(bp, tok, batches_T(split, seed, rT.batch), rT, seed)
        res["timing"][f"train_T_on_base'{tag}_s"] = time.perf_counter() - t0
        r_pp = ev(f"post'{tag}", pp)
        del pp

        alphas = ALPHAS if s == 1.0 else (1.0,)
        r_pd = {}
        for alpha in alphas:
            out = sd / f"paramdelta{tag}-a{alpha:g}"
            info = _paramdelta_via_artifacts(base_dir, post_dir, bp_dir, out, alpha, sd, args.use_library)
            for k in ("extract_s", "artifact_bytes"):
                if k in info:
                    res["timing"][k] = info[k]
            res["timing"].setdefault("apply_s", []).append(info.get("apply_s", 0.0))
            got = load_folder_state(out)
            cmp = compare_paramdelta(got, base_state, post_state, bp_state, alpha)
            cmp.update(alpha=alpha, strength=s, path=info["path"])
            res["equality"].append(cmp)
            pd_model = AutoModel.from_pretrained(out, torch_dtype=torch.float32)  # the folder as written
            r_pd[alpha] = ev(f"ParamΔ{tag} α={alpha:g}", pd_model)
            del pd_model
            shutil.rmtree(out)

        res["distance"].append({
            "strength": s, "dist": dist, "rel_dist": dist / delta_norm,
            "base'": r_bp, "post'": r_pp, "ParamΔ": r_pd[1.0],
        })

        if s == 1.0:
            res["delta_norm"] = delta_norm
            res["base'_dist"] = dist
            # control 1: base' + per-tensor noise with the delta's norm
            g = torch.Generator().manual_seed(seed + 7)
            noisy = {}
            for k, v in bp_state.items():
                if k in delta:
                    n = torch.randn(v.shape, generator=g, dtype=v.dtype)
                    dn = float(delta[k].norm())
                    noisy[k] = v + (n * (dn / float(n.norm())) if dn > 0 else 0.0)
                else:
                    noisy[k] = v
            ev("base' + noise(|Δ|)", with_state(base_model, noisy))
            del noisy
            # control 2: a delta from an unrelated fine-tune, rescaled to |Δ| (not in --fast)
            if args.fast:
                del bp
                continue
            t0 = time.perf_counter()
            wrong = train(base_model, tok, batches_wrong(seed + 200, rT.batch), rT, seed + 200)
            res["timing"]["train_wrong_s"] = time.perf_counter() - t0
            wd = diff_state(state_of(wrong), base_state)
            del wrong
            wn = norm_of(wd)
            res["wrong_norm_raw_ratio"] = wn / delta_norm
            k_scale = delta_norm / wn
            wrong_state = {k: (v + k_scale * wd[k]) if k in wd else v for k, v in bp_state.items()}
            ev("base' + wrong Δ", with_state(base_model, wrong_state))
            del wrong_state
        del bp
    shutil.rmtree(sd, ignore_errors=True)
    res["timing"]["seed_s"] = time.perf_counter() - t_seed
    return res


CHECKS = [
    ("ParamΔ(α=1) T R@1 ≥ 0.9", lambda m: m["ParamΔ α=1"]["T"] >= 0.9),
    ("ParamΔ(α=1) T R@1 ≥ base' T + 0.5", lambda m: m["ParamΔ α=1"]["T"] >= m["base'"]["T"] + 0.5),
    ("ParamΔ(α=1) A R@1 ≥ 0.95", lambda m: m["ParamΔ α=1"]["A"] >= 0.95),
    ("ParamΔ(α=1) A×T R@1 ≥ base' A×T + 0.2", lambda m: m["ParamΔ α=1"]["AxT"] >= m["base'"]["AxT"] + 0.2),
    ("noise control within 0.05 of base' (T, A, A×T R@1)",
     lambda m: all(abs(m["base' + noise(|Δ|)"][k] - m["base'"][k]) <= 0.05 for k in ("T", "A", "AxT"))),
]


def mean_models(results: list[dict]) -> tuple[dict, dict]:
    names = [n for n in results[0]["models"] if all(n in r["models"] for r in results)]
    mean, sd = {}, {}
    for n in names:
        mean[n], sd[n] = {}, {}
        for k in results[0]["models"][n]:
            xs = np.array([r["models"][n][k] for r in results])
            mean[n][k] = float(xs.mean())
            sd[n][k] = float(xs.std(ddof=1)) if len(xs) > 1 else 0.0
    return mean, sd


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3, help="number of seeds, 0..N-1 (default 3)")
    ap.add_argument("--seed0", type=int, default=0, help="first seed (default 0)")
    ap.add_argument("--fast", action="store_true",
                    help="the test's setting: 40 steps, one base′ strength (no distance table), "
                         "no wrong-Δ control")
    ap.add_argument("--sweep-seeds", type=int, default=1,
                    help="run the base′-distance sweep (×3, ×9) for the first K seeds (default 1; 0 with --fast)")
    ap.add_argument("--out-md", type=Path, default=REPO / "BENCHMARKS.md",
                    help="Markdown file whose transfer section is (re)written; '-' for none")
    ap.add_argument("--plot", type=Path, default=REPO / "bench" / "transfer.png", help="plot PNG; '-' for none")
    ap.add_argument("--json", type=Path, default=None, help="also dump raw results as JSON here")
    ap.add_argument("--resume", type=Path, default=None,
                    help="save each seed's result here as seedN.json, and reuse one saved with the same settings")
    ap.add_argument("--workdir", type=Path, default=None, help="where model folders go (default: a temp dir)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--in-memory", action="store_true",
                    help="development only: compute ParamΔ in memory when deltaformat.extract/apply are missing")
    ap.add_argument("--steps-a", type=int, default=None, help="A-training steps (default 60, --fast 40)")
    ap.add_argument("--steps-t", type=int, default=None, help="T-training steps (default 60, --fast 40)")
    ap.add_argument("--lr-a", type=float, default=1e-4)
    ap.add_argument("--lr-t", type=float, default=1e-4)
    ap.add_argument("--n-test", type=int, default=100)
    args = ap.parse_args(argv)
    for k in ("steps_a", "steps_t"):
        if getattr(args, k) is None:
            setattr(args, k, 40 if args.fast else 60)

    torch.set_num_threads(args.threads)
    args.use_library = library_available()
    if not args.use_library and not args.in_memory:
        print("error: deltaformat.extract / deltaformat.apply are not available in this checkout "
              "(pass --in-memory to run the experiment without the library)", file=sys.stderr)
        return 2
    if args.use_library and args.in_memory:
        print("note: --in-memory ignored, deltaformat.extract/apply are available", file=sys.stderr)

    import transformers

    def log(msg):
        print(msg, flush=True)

    t_all, cpu0, load0 = time.perf_counter(), time.process_time(), os.getloadavg()[0]
    tok, base_model = load_base()
    base_model.eval()
    seeds = list(range(args.seed0, args.seed0 + args.seeds))
    own_tmp = args.workdir is None
    work = Path(tempfile.mkdtemp(prefix="paramdelta-transfer-")) if own_tmp else args.workdir
    work.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for seed in seeds:
            sweep = not args.fast and len(results) < args.sweep_seeds
            config = {"results_version": RESULTS_VERSION, "seed": seed, "sweep": sweep, "fast": args.fast,
                      "steps_a": args.steps_a, "steps_t": args.steps_t, "lr_a": args.lr_a, "lr_t": args.lr_t,
                      "n_test": args.n_test, "path": "library" if args.use_library else "in-memory",
                      "torch": torch.__version__}
            saved = args.resume / f"seed{seed}.json" if args.resume else None
            if saved and saved.exists():
                old = json.loads(saved.read_text())
                if old.get("config") == config:
                    log(f"seed {seed}: reusing the result saved in {saved} (computed {old['result']['timing']['seed_s']:.0f} s)")
                    old["result"]["reused"] = True
                    results.append(old["result"])
                    continue
                log(f"seed {seed}: {saved} was made with another configuration; recomputing")
            log(f"seed {seed} ({'library' if args.use_library else 'in-memory'} ParamΔ)")
            res = run_seed(seed, args, tok, base_model, work, log, sweep=sweep)
            results.append(res)
            if saved:
                saved.parent.mkdir(parents=True, exist_ok=True)
                saved.write_text(json.dumps({"config": config, "result": res}, indent=1))
    finally:
        if own_tmp:
            shutil.rmtree(work, ignore_errors=True)
    wall = time.perf_counter() - t_all

    checks = []
    for name, fn in CHECKS:
        checks.append((name, all(fn(r["models"]) for r in results)))
    eq_ok = all(e["ok"] for r in results for e in r["equality"])
    worst = max(e.get("max_ulp", 0.0) for r in results for e in r["equality"])
    checks.append((f"ParamΔ folders equal the in-memory sum within 1 fp32 ulp (worst {worst:.2f} ulp)", eq_ok))
    if not args.use_library:
        checks.append(("ParamΔ produced through deltaformat.extract/apply", False))

    mean, sd = mean_models(results)
    cmd = "python -m bench.transfer" + (f" --seeds {args.seeds}" if args.seeds != 3 else "") + (" --fast" if args.fast else "")
    if args.resume:
        cmd += f" --resume {args.resume}"
    if args.json:
        cmd += f" --json {args.json}"
    machine = describe()
    meta = {
        "command": cmd, "seeds": ", ".join(map(str, seeds)), "wall_s": wall, "torch": torch.__version__,
        "transformers": transformers.__version__,
        "machine": f"{machine['cpu']}, {machine['usable_cores']} cores",
        "threads": torch.get_num_threads(), "path": "library" if args.use_library else "in-memory",
        "artifact_mb": float(np.mean([r["timing"].get("artifact_bytes", np.nan) for r in results])) / 1e6,
        "model_mb": float(np.mean([r["model_bytes"] for r in results])) / 1e6,
        "cpu_s": time.process_time() - cpu0, "load": (load0, os.getloadavg()[0]),
        "steps_a": args.steps_a, "steps_t": args.steps_t, "lr_a": args.lr_a, "lr_t": args.lr_t, "n_test": args.n_test,
    }
    plot_rel = None
    if str(args.plot) != "-":
        make_plot(results, mean, sd, args.plot)
        log(f"plot: {args.plot}")
        if str(args.out_md) != "-":
            try:
                plot_rel = os.path.relpath(args.plot.resolve(), args.out_md.resolve().parent)
            except ValueError:
                plot_rel = str(args.plot)
    md = make_markdown(results, mean, sd, checks, meta, plot_rel)
    print()
    print(md)
    if str(args.out_md) != "-":
        write_section(args.out_md, SECTION, md)
        log(f"wrote section to {args.out_md}")
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": results, "checks": checks}, indent=1, default=str))
    failed = [n for n, ok in checks if not ok]
    for n in failed:
        print(f"CHECK FAILED: {n}", file=sys.stderr)
    print(f"wall time {wall:.1f} s", flush=True)
    return 1 if failed else 0
