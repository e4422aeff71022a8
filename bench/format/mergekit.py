"""apply against mergekit task_arithmetic computing the same ParamΔ model (mergekit in its own venv)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.format.harness import log, rm_tree, run_child, safetensors_files
from bench.format.paths import BENCH, ROOT

MERGEKIT_VENV = BENCH / "mergekit-venv"


MERGEKIT_VERSION = "0.1.5"


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
    rm_tree(art)
    import deltaformat

    deltaformat.extract(info["base"], info["post"], art, quiet=True)
    mk, pd, agree = [], [], None
    for r in range(reps):
        rm_tree(work / "mk")
        mk.append(run_child([str(exe), str(cfg), str(work / "mk"), "--no-copy-tokenizer", "--quiet", "--no-write-model-card"]))
        rm_tree(work / "pd")
        pd.append(run_child([sys.executable, "-m", "deltaformat.cli", "apply", str(art), "--base", str(info["newbase"]),
                             "--out", str(work / "pd"), "-q"], cwd=ROOT))
        if r == 0:
            agree = bitwise_agreement(work / "pd", work / "mk")
    for d in ("mk", "pd", "art"):
        rm_tree(work / d)
    return {"mergekit": mk, "paramdelta": pd, "agree": agree, "params": info["params"]}


def bitwise_agreement(a: Path, b: Path) -> dict:
    import torch
    from safetensors import safe_open

    def tensors(folder: Path) -> dict:
        out = {}
        for f in safetensors_files(folder):
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
