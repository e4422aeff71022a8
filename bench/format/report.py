"""The format section of BENCHMARKS.md, written from the measured values (no number in its prose is typed in)."""

from __future__ import annotations

from bench.format.harness import median, ratios, settling

# Not measured here: the compression ratio ZipNN's authors publish for bf16 deltas, quoted as the anchor.
ZIPNN_PUBLISHED_BF16_RATIO = 2.40


def _settling_note(speed: list[tuple[str, dict]]) -> str:
    """How far this run's untimed first runs of apply and of its floor were from the timed runs after them."""
    parts = []
    for what, name in (("apply", "apply"), ("floor_apply", "its floor")):
        spread = settling([x for _, r in speed for x in r[what]])
        if spread:
            parts.append(f"{name} {spread[0]:.2f}–{spread[1]:.2f}×")
    return f" (in this run, untimed first run / timed run: {', '.join(parts)})" if parts else ""


def _profile_settling(p: dict) -> str:
    spread = settling([p[k] for k in ("extract", "floor_extract", "floor_apply", "apply", "apply_orig")])
    return f" (here the untimed first runs took {spread[0]:.2f}–{spread[1]:.2f}× the timed ones)" if spread else ""


def _f(x: float | None, nd: int = 2) -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "–"
    return f"{x:.{nd}f}"


def _zipnn_cell(bytes_per_param: float, row: dict) -> str:
    if not row["zipnn_f32"]:
        return "–"  # zipnn absent or broken
    return f"{bytes_per_param:.3f}" + ("" if row["zipnn_roundtrip"] else " (round trip FAILED)")


def _size_table(rows: list[dict]) -> list[str]:
    out = [
        "| pair | params | distinct Δ values | artifact B/param | × smaller than the raw post | % of order-0 bound (model / per tensor) "
        "| zstd-1 raw Δ | zstd-1 Δ planes | ZipNN exact fp32 Δ | ZipNN bf16 Δ (lossy) "
        "| artifact vs ZipNN exact / lossy | artifact vs zstd-1 planes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        n = r["params"]
        a = r["tensor_bytes"] / n
        zf, zb = r["zipnn_f32"] / n, r["zipnn_bf16"] / n
        out.append(
            f"| {r['label']} | {n / 1e6:.1f} M | {r['distinct']:,} | **{a:.3f}** | {r['raw_bpp'] / a:.2f}× "
            f"| {100 * r['bound_model'] / r['tensor_bytes']:.1f} % / {100 * r['bound_tensor'] / r['tensor_bytes']:.1f} % "
            f"| {r['zstd_raw'] / n:.3f} | {r['zstd_planes'] / n:.3f} | {_zipnn_cell(zf, r)} | {_zipnn_cell(zb, r)} "
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
        "| (CPU s ratio) | apply on the original base (verified) / floor "
        "| cores used (CPU s / wall s): extract, its floor, apply, its floor | apply's fsync s |",
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
    out = ["| model | bf16 weights | peak RSS extract | peak RSS apply | peak RSS apply (original base) | floor load+save "
           "| floor extract (load base, post) |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for label, r in rows:
        mx = lambda xs: max(x["rss_mb"] for x in xs) if xs else float("nan")  # noqa: E731
        out.append(f"| {label} | {r['bytes'] / 1e9:.2f} GB | {mx(r['extract']):.0f} MB | {mx(r['apply']):.0f} MB | {mx(r['apply_orig']):.0f} MB "
                   f"| {mx(r['floor_apply']):.0f} MB | {mx(r['floor_extract']):.0f} MB |")
    out.append(f"| (imports only: python + torch + paramdelta) | | | | | {noop['rss_mb']:.0f} MB | |")
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


def report(m: dict, cfg: dict, sizes: list[dict], codec_rows: list[dict] | str, speed: list[tuple[str, dict]], noop: dict,
           mk: dict | str, minilm_speed: dict | None, elapsed: float, profile: dict | None = None) -> str:
    L: list[str] = []
    L.append("## Delta format: size, speed, memory")
    L.append("")
    kind = "QUICK run: smaller models, fewer repeats" if cfg["quick"] else "full run"
    L.append(f"Written by `python -m bench.run{' --quick' if cfg['quick'] else ''}` ({kind}; "
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
             f"path did; every chunk's round trip is checked. \"bf16 Δ (lossy)\" is ZipNN on bf16(Δ), the published "
             f"{ZIPNN_PUBLISHED_BF16_RATIO:.2f}× anchor, "
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
        L.append(f"From `bench.codec_bench.run_codec_bench({n}, 0.009)` (the codec's own bench, stand-in Δ; MB/s of bf16 model bytes; "
                 "best of its repeats):")
        L.append("")
        L += _codec_table(codec_rows)
    L.append("")
    L.append("### 3. Wall time against the floor, scaling, peak RSS (stand-in, relative Δ 0.009)")
    L.append("")
    L.append("Floors, in a child process like the measured command: **apply's** = safetensors `load_file` + `save_file` of every "
             "shard of the new base; **extract's** = reading every byte of the base's and the post's shards (`readinto` a reused buffer: the "
             "cheapest possible load, stricter than `safetensors.torch.load`) plus writing as many bytes as the artifact holds. "
             "Times exclude interpreter start and imports (measured inside the child). "
             f"Repeats: extract {cfg['reps_extract']}, apply {cfg['reps_apply']} (original base {cfg['reps_orig']}); at the largest size "
             f"extract {cfg['reps_last'][0]}, apply {cfg['reps_last'][1]}; medians. The floor of apply on the original base is the "
             "new base's floor of the same repeat (same size). Every timed run (floors included) follows an untimed run of the "
             "same command, because on a virtual machine a run's time can depend on the command before it"
             + _settling_note(speed) + ".")
    L.append("")
    L += _speed_table(speed)
    if minilm_speed:
        L.append("")
        L.append(f"Real fine-tune pair (all-MiniLM-L6-v2, fp32 as trained, {minilm_speed['bytes'] / 1e6:.0f} MB; "
                 "the time is mostly per-file and per-tensor fixed cost):")
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
        f"page-cache pages{_profile_settling(p)}: both move from run to run.",
    ]


def targets(sizes: list[dict], codec_rows, speed, mk) -> list[str]:
    out = ["| target | measured | |", "|---|---|---|"]

    def line(name: str, value: str, ok: bool | None) -> None:
        out.append(f"| {name} | {value} | {'met' if ok else ('MISSED' if ok is not None else '–')} |")

    st = next((r for r in sizes if "0.009" in r["label"]), None)
    if st:
        pct = 100 * st["bound_model"] / st["tensor_bytes"]
        line("lossless size ≥ 95 % of the order-0 bound (stand-in, rel 0.009)",
             f"{pct:.1f} % ({st['tensor_bytes'] / st['params']:.3f} B/param)", pct >= 95)
    for r in sizes:
        if r["zipnn_f32"] and r.get("target", True):
            z = r["zipnn_f32"] / r["tensor_bytes"]
            line(f"≥ 1.3× smaller than ZipNN 0.5.0 on the same Δ ({r['label']})",
                 f"{z:.2f}× (lossy bf16 Δ: {r['zipnn_bf16'] / r['tensor_bytes']:.2f}×)", z >= 1.3)
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
