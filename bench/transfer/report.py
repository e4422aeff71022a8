"""The transfer section of BENCHMARKS.md and its plot, written from the results."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.transfer.data import A_TEST_CONTEXTS, ALPHAS, BP, NOUNS, PP, STRENGTHS
from bench.transfer.model import Recipe

MIN_GAIN = 0.01  # post′'s A×T margin gain below which "transfer" (a ratio of gains) is not reported
CONVERGED = 0.9  # T recall@1 from which a model counts as having learned T


def fmt(mean, sd, n, k, nseeds):
    s = f"{mean[n][k]:.3f}" if not k.endswith("_m") else f"{mean[n][k]:+.3f}"
    if nseeds > 1:
        s += f" ± {sd[n][k]:.3f}"
    return s


def make_markdown(results, mean, sd, checks, meta, plot_rel) -> str:
    ns = len(results)
    L = []
    L.append("## Transfer: the ParamΔ effect through paramdelta artifacts (all-MiniLM-L6-v2, CPU)")
    L.append("")
    L.append("A *small-scale analogue* of the ParamΔ experiment (arXiv 2504.21023) — a "
             f"{meta['model_mb'] / 4:.0f}M-parameter "  # fp32 weights: 4 bytes a parameter
             "sentence encoder and two toy skills, **not** the paper's 70B-LLM result. "
             "base = all-MiniLM-L6-v2 (real weights); base′ = base trained further on skill **A** "
             f"(made-up alias words for {len(NOUNS)} nouns: \"the voodund ran\" ↔ \"the dog ran\"); post = base fine-tuned "
             "on task **T** (\"who did what to whom\": an active sentence must retrieve its passive, not the "
             "passive with the roles swapped); post′ = base′ fine-tuned on T with the same recipe; "
             "**ParamΔ = base′ + α(post − base)**, made by `deltaformat.extract(base, post, artifact)` then "
             "`deltaformat.apply([artifact], base′, out, alphas=[α])`. "
             "Tests are held out: T uses unseen verbs and noun pairs (pool = every test passive and its role swap); "
             f"A uses unseen contexts (pool = the context with each of the {len(NOUNS)} nouns); **A×T** is the T test with the "
             "query written in aliases, a combination no model was trained on. "
             "R@1 = recall@1; *margin* = mean of cos(query, right) − max cos(query, wrong) (continuous; R@1 saturates). "
             f"Mean{' ± sd over seeds ' + ', '.join(str(r['seed']) for r in results) if ns > 1 else ', seed ' + str(results[0]['seed'])}.")
    L.append("")
    L.append("| model | T R@1 | T margin | A R@1 | A margin | A×T R@1 | A×T margin |")
    L.append("|---|---|---|---|---|---|---|")
    order = ["base", "base'", "post", "post'"] + [f"ParamΔ α={a:g}" for a in ALPHAS] + ["base' + noise(|Δ|)", "base' + wrong Δ"]
    label = {"base'": "base′", "post'": "post′", "base' + noise(|Δ|)": "control: base′ + noise (‖Δ‖ per tensor)",
             "base' + wrong Δ": "control: base′ + wrong Δ (unrelated task, ‖Δ‖)"}
    for n in order:
        if n not in mean:
            continue
        lab = label.get(n, n)
        if n == "ParamΔ α=1":
            lab = "**ParamΔ α=1**"
        L.append(f"| {lab} | " + " | ".join(fmt(mean, sd, n, k, ns) for k in ("T", "T_m", "A", "A_m", "AxT", "AxT_m")) + " |")
    L.append("")

    # headline
    ratios = [r["models"]["ParamΔ α=1"]["AxT"] / max(r["models"]["post'"]["AxT"], 1e-9) for r in results]
    gains = [(r["models"]["ParamΔ α=1"]["AxT_m"] - r["models"]["base'"]["AxT_m"])
             / max(r["models"]["post'"]["AxT_m"] - r["models"]["base'"]["AxT_m"], 1e-9) for r in results]
    best = {}
    for key in ("AxT_m", "T_m"):
        best[key] = max(ALPHAS, key=lambda a: mean[f"ParamΔ α={a:g}"][key])

    def pm(xs):
        return f"{100 * np.mean(xs):.0f}%" + (f" ± {100 * np.std(xs, ddof=1):.0f}%" if len(xs) > 1 else "")

    pdm, bpm, ppm = mean["ParamΔ α=1"], mean[BP], mean[PP]
    head = (f"**Headline** (α=1). T: R@1 base′ {bpm['T']:.2f} → ParamΔ {pdm['T']:.2f} (post′ {ppm['T']:.2f}); "
            f"margin {bpm['T_m']:+.3f} → {pdm['T_m']:+.3f} (post′ {ppm['T_m']:+.3f}). "
            f"A kept: R@1 {pdm['A']:.2f}, margin {pdm['A_m']:+.3f} (base′ {bpm['A_m']:+.3f}, post′ {ppm['A_m']:+.3f}). "
            f"**A×T**, which no model was trained on: R@1 base′ {bpm['AxT']:.2f} → ParamΔ {pdm['AxT']:.2f} vs "
            f"post′ {ppm['AxT']:.2f}, i.e. {pm(ratios)} of post′'s R@1; margin {bpm['AxT_m']:+.3f} → "
            f"{pdm['AxT_m']:+.3f} vs post′ {ppm['AxT_m']:+.3f}, i.e. ParamΔ recovers {pm(gains)} of post′'s gain "
            f"over base′. Best α by mean margin: {best['AxT_m']:g} on A×T, {best['T_m']:g} on T. ")
    nz = mean.get("base' + noise(|Δ|)")
    if nz:
        head += (f"Controls: base′ + noise of ‖Δ‖ gives T {nz['T']:.2f}, A×T {nz['AxT']:.2f} (margins "
                 f"{nz['T_m']:+.3f}, {nz['AxT_m']:+.3f}) — what base′ alone gives")
        wr = mean.get("base' + wrong Δ")
        if wr:
            head += (f"; the wrong Δ gives T {wr['T']:.2f}, A×T {wr['AxT']:.2f} (margins {wr['T_m']:+.3f}, "
                     f"{wr['AxT_m']:+.3f}): a delta's size alone does not carry T")
        head += "."
    L.append(head)
    L.append("")

    # distance table
    swept = [r for r in results if len(r["distance"]) > 1]
    if swept:
        L.append(f"How far base′ may move from base: A-training learning rate {'/'.join(f'×{s:g}' for s in STRENGTHS)} (same steps); "
                 f"seed{'s' if len(swept) > 1 else ''} {', '.join(str(r['seed']) for r in swept)}; "
                 "‖base′ − base‖ is given relative to ‖post − base‖. ParamΔ at α=1. "
                 "*gain* = A×T margin minus base′'s; *transfer* = ParamΔ's gain / post′'s gain (n/a when post′ "
                 f"gains < {MIN_GAIN:g}).")
        L.append("")
        L.append("| base′ strength | ‖base′−base‖/‖Δ‖ | A R@1 base′ | T R@1 base′ / ParamΔ / post′ | "
                 "A×T R@1 base′ / ParamΔ / post′ | A×T margin base′ / ParamΔ / post′ | gain ParamΔ / post′ | transfer |")
        L.append("|---|---|---|---|---|---|---|---|")
        for i, s in enumerate(STRENGTHS):
            rows = [r["distance"][i] for r in swept]

            def m(who, k, rows=rows):
                return float(np.mean([row[who][k] for row in rows]))

            g_pd = [row["ParamΔ"]["AxT_m"] - row[BP]["AxT_m"] for row in rows]
            g_pp = [row[PP]["AxT_m"] - row[BP]["AxT_m"] for row in rows]
            tr_txt = pm([a / b for a, b in zip(g_pd, g_pp)]) if min(g_pp) >= MIN_GAIN else "n/a"

            L.append(f"| ×{s:g} | {np.mean([row['rel_dist'] for row in rows]):.2f} | {m(BP, 'A'):.3f} | "
                     f"{m(BP, 'T'):.3f} / {m('ParamΔ', 'T'):.3f} / {m(PP, 'T'):.3f} | "
                     f"{m(BP, 'AxT'):.3f} / {m('ParamΔ', 'AxT'):.3f} / {m(PP, 'AxT'):.3f} | "
                     f"{m(BP, 'AxT_m'):+.3f} / {m('ParamΔ', 'AxT_m'):+.3f} / {m(PP, 'AxT_m'):+.3f} | "
                     f"{np.mean(g_pd):+.3f} / {np.mean(g_pp):+.3f} | {tr_txt} |")
        L.append("")
        notes = []
        for i, st in enumerate(STRENGTHS):
            t_pd = float(np.mean([r["distance"][i]["ParamΔ"]["T"] for r in swept]))
            t_pp = float(np.mean([r["distance"][i][PP]["T"] for r in swept]))
            if t_pp < CONVERGED or t_pd < CONVERGED:
                notes.append(f"at ×{st:g} ParamΔ's T R@1 is {t_pd:.2f} and post′'s {t_pp:.2f}")
        if notes:
            L.append(f"Where post′ is below {CONVERGED:g} on T, the same T recipe did not converge from that base′ either, so "
                     "post′ is no ceiling there: " + "; ".join(notes) + ".")
            L.append("")

    eq = [e for r in results for e in r["equality"]]
    bit = [e.get("bitwise_frac", 0.0) for e in eq]
    L.append(f"**Through the artifacts.** {len(eq)} ParamΔ models were written by "
             f"{'`deltaformat.apply`' if meta['path'] == 'library' else 'the in-memory fallback (library not used!)'} "
             f"and compared with base′ + α(post − base) computed in memory in fp32: "
             f"{100 * min(bit):.3f}–{100 * max(bit):.3f}% of elements equal it bitwise (the library's fp32 kernel rounds "
             f"differently from the two-step expression), the worst element is {max(e.get('max_ulp', 0.0) for e in eq):.2f} fp32 ulp "
             f"off (at the scale of the largest term; tolerance 1 ulp), and {max(e.get('max_ulp_vs_fp64', 0.0) for e in eq):.2f} "
             f"ulp from the exact (fp64) sum. Weights stored in fp32 (safetensors); artifact "
             f"{meta.get('artifact_mb', float('nan')):.1f} MB for a {meta.get('model_mb', float('nan')):.1f} MB model.")
    L.append("")
    L.append("Checks (per seed; the benchmark exits non-zero if one fails):")
    L.append("")
    for name, ok in checks:
        L.append(f"- {'✅' if ok else '❌'} {name}")
    L.append("")
    wr = [r["wrong_norm_raw_ratio"] for r in results if "wrong_norm_raw_ratio" in r]
    wrong_txt = (f"wrong Δ = number words ↔ digits, same recipe as T (raw norm {np.mean(wr):.2f}× ‖Δ‖, rescaled to "
                 f"‖Δ‖)" if wr else "no wrong-Δ control (--fast)")
    L.append(f"Recipe: InfoNCE (scale {Recipe.scale:g}, in-batch + hard negatives), AdamW, batch {Recipe.batch}; A: {meta['steps_a']} steps at "
             f"lr {meta['lr_a']:g}; T: {meta['steps_t']} steps at lr {meta['lr_t']:g}; {wrong_txt}. "
             f"T test: {meta['n_test']} held-out items; A test: {len(A_TEST_CONTEXTS)} contexts × {len(NOUNS)} nouns. "
             f"‖post − base‖ = {np.mean([r['delta_norm'] for r in results]):.2f}, ‖base′ − base‖ = "
             f"{np.mean([r[BP + '_dist'] for r in results]):.2f}.")
    L.append("")
    per_seed = ", ".join(f"{r['seed']}: {r['timing']['seed_s']:.0f} s{' (earlier run, --resume)' if r.get('reused') else ''}"
                         for r in results)
    L.append(f"Run: `{meta['command']}` — wall time {meta['wall_s']:.0f} s ({meta['cpu_s']:.0f} s CPU) for this "
             f"invocation; per seed {per_seed} (sum {sum(r['timing']['seed_s'] for r in results):.0f} s); "
             f"torch {meta['torch']}, "
             f"transformers {meta['transformers']}, {meta['machine']}, {meta['threads']} torch threads; load average "
             f"{meta['load'][0]:.1f} at start, {meta['load'][1]:.1f} at end (a shared machine: wall times include "
             f"waiting for the CPU).")
    if plot_rel:
        L.append("")
        L.append(f"![transfer plot]({plot_rel})")
    return "\n".join(L) + "\n"


def make_plot(results, mean, sd, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    colors = {"T": "tab:blue", "A": "tab:green", "AxT": "tab:red"}
    names = {"T": "T", "A": "A", "AxT": "A×T"}
    for ax, suffix, title in ((axes[0], "", "recall@1"), (axes[1], "_m", "margin")):
        for k in ("T", "A", "AxT"):
            key = k + suffix
            ys = [mean[f"ParamΔ α={a:g}"][key] for a in ALPHAS]
            es = [sd[f"ParamΔ α={a:g}"][key] for a in ALPHAS]
            ax.errorbar(ALPHAS, ys, yerr=es, marker="o", color=colors[k], label=f"ParamΔ {names[k]}", capsize=3)
            ax.axhline(mean["post'"][key], color=colors[k], ls="--", lw=1, label=f"post′ {names[k]}")
            ax.axhline(mean["base'"][key], color=colors[k], ls=":", lw=1, label=f"base′ {names[k]}")
        ax.set_xlabel("α  (ParamΔ = base′ + α(post − base))")
        ax.set_title(f"held-out {title} vs α")
        ax.set_xticks(ALPHAS)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=3, loc="lower right")
    ax = axes[2]
    swept = [r for r in results if len(r["distance"]) > 1]
    if swept:
        for who, mk, c in (("base'", "s", "tab:gray"), ("ParamΔ", "o", "tab:red"), ("post'", "^", "black")):
            xs = [np.mean([r["distance"][i]["rel_dist"] for r in swept]) for i in range(len(STRENGTHS))]
            ys = [np.mean([r["distance"][i][who]["AxT_m"] for r in swept]) for i in range(len(STRENGTHS))]
            ax.plot(xs, ys, marker=mk, color=c, label={"base'": "base′", "post'": "post′"}.get(who, "ParamΔ α=1"))
            for x, y, s in zip(xs, ys, STRENGTHS):
                if who == "ParamΔ":
                    ax.annotate(f"×{s:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax2 = ax.twinx()
        for who, mk, c in (("base'", "s", "tab:gray"), ("ParamΔ", "o", "tab:red"), ("post'", "^", "black")):
            xs = [np.mean([r["distance"][i]["rel_dist"] for r in swept]) for i in range(len(STRENGTHS))]
            ys = [np.mean([r["distance"][i][who]["T"] for r in swept]) for i in range(len(STRENGTHS))]
            ax2.plot(xs, ys, marker=mk, color=c, ls=":", alpha=0.6, mfc="none")
        ax2.set_ylabel("T recall@1 (dotted, hollow)")
        ax2.set_ylim(0, 1.05)
        ax.set_xscale("log")
        ax.set_xlabel("‖base′ − base‖ / ‖post − base‖   (A-training lr ×1, ×3, ×9)")
        ax.set_ylabel("A×T margin (solid)")
        ax.set_title("transfer vs how far base′ moved (α=1)")
        ax.legend(fontsize=8, loc="center left", framealpha=0.9)
        ax.grid(alpha=0.3)
    else:
        ax.text(0.5, 0.5, "distance sweep not run (--fast)", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    fig.suptitle(f"ParamΔ transfer on all-MiniLM-L6-v2 (small-scale analogue), {len(results)} seed(s)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
