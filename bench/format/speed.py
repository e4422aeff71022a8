"""Wall time and peak RSS of extract and apply against their floors, and where their CPU goes."""

from __future__ import annotations

from pathlib import Path

from bench.format.harness import evict_cache, rm_tree, run_child, run_settled, warm_cache


def speed_at(info: dict, work: Path, reps_extract: int, reps_apply: int, reps_orig: int, cold: bool = False) -> dict:
    """extract and apply against their floors, interleaved; one artifact kept for the apply runs."""
    work.mkdir(parents=True, exist_ok=True)
    base, post, newbase = info["base"], info["post"], info["newbase"]
    art = work / "art"
    ex, fx = [], []
    for _ in range(reps_extract):
        warm_cache([base, post])
        ex.append(run_settled(["--child", "extract", str(base), str(post), str(art)], art))
        nbytes = sum(f.stat().st_size for f in art.rglob("*") if f.is_file())
        fx.append(run_settled(["--child", "floor-extract", str(base), str(post), str(nbytes), str(work / "fx")], work / "fx"))
        rm_tree(work / "fx")
    ap, fa, orig = [], [], []
    warm_cache([base, newbase, art])
    for r in range(reps_apply):
        for kind in ("floor", "apply", "orig"):
            if kind == "orig" and r >= reps_orig:
                continue
            if kind == "floor":
                fa.append(run_settled(["--child", "floor-apply", str(newbase), str(work / "out")], work / "out"))
            else:
                res = run_settled(["--child", "apply", str(art), str(newbase if kind == "apply" else base), str(work / "out")], work / "out")
                (ap if kind == "apply" else orig).append(res)
            rm_tree(work / "out")
    row = {"params": info["params"], "bytes": info.get("bytes", 2 * info["params"]),
           "extract": ex, "floor_extract": fx, "apply": ap, "floor_apply": fa, "apply_orig": orig,
           "artifact_bytes": ex[-1].get("stored_bytes")}
    if not all(r["verified"] for r in orig):
        raise RuntimeError("apply on the original base did not verify")
    if cold:
        cold_pairs = []
        for _ in range(1):
            rm_tree(work / "out")
            evict_cache([newbase])
            f = run_child(["--child", "floor-apply", str(newbase), str(work / "out")])
            rm_tree(work / "out")
            evict_cache([newbase, art])
            a = run_child(["--child", "apply", str(art), str(newbase), str(work / "out")])
            rm_tree(work / "out")
            cold_pairs.append((a, f))
        row["cold"] = cold_pairs
    rm_tree(art)
    return row


def where_cpu_goes(info: dict, work: Path) -> dict:
    """One instrumented extract and apply (new base, original base) and their floors: CPU seconds per stage."""
    work.mkdir(parents=True, exist_ok=True)
    art = work / "art"
    rm_tree(art)
    warm_cache([info["base"], info["post"], info["newbase"]])
    out = {"bytes": info["bytes"]}
    out["extract"] = run_settled(["--child", "profile-extract", str(info["base"]), str(info["post"]), str(art)], art)
    nbytes = sum(f.stat().st_size for f in art.rglob("*") if f.is_file())
    out["floor_extract"] = run_settled(["--child", "floor-extract", str(info["base"]), str(info["post"]), str(nbytes), str(work / "fx")], work / "fx")
    rm_tree(work / "fx")
    # the floor first: it also brings the new base into the page cache, as in the timed runs
    out["floor_apply"] = run_settled(["--child", "floor-apply", str(info["newbase"]), str(work / "out")], work / "out")
    for key, base in (("apply", info["newbase"]), ("apply_orig", info["base"])):
        out[key] = run_settled(["--child", "profile-apply", str(art), str(base), str(work / "out")], work / "out")
    rm_tree(work / "out")
    rm_tree(art)
    return out
