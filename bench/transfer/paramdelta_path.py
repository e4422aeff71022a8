"""ParamΔ made through paramdelta's own path (extract, then apply) and checked against the in-memory sum."""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import torch

from bench.transfer.model import load_folder_state


def library_available() -> bool:
    try:
        import deltaformat
    except ImportError:
        return False
    return hasattr(deltaformat, "extract") and hasattr(deltaformat, "apply")


def paramdelta_in_memory(base, post, base_prime, alpha: float) -> dict[str, torch.Tensor]:
    """base' + α (post − base), tensor by tensor, in the stored dtype (fp32)."""
    out = {}
    for k, bp in base_prime.items():
        if k in post and bp.is_floating_point():
            out[k] = bp + alpha * (post[k] - base[k])
        else:
            out[k] = bp.clone()
    return out


_EXTRACTED: dict[tuple[str, str], Path] = {}


def _paramdelta_via_artifacts(base_dir: Path, post_dir: Path, base_prime_dir: Path, out_dir: Path,
                              alpha: float, work: Path, use_library: bool) -> dict:
    """Produce ParamΔ = base' + α (post − base) as an HF folder at ``out_dir``.

    With the library: ``deltaformat.extract`` once per (base, post), then
    ``deltaformat.apply([artifact], base', out, alphas=[α])``.  Without it (only with
    --in-memory, for development) the same sum is computed here and saved.
    Returns timing and which path was used.
    """
    info = {"path": "library" if use_library else "in-memory"}
    if out_dir.exists():
        shutil.rmtree(out_dir)
    if use_library:
        import deltaformat

        key = (str(base_dir), str(post_dir))
        if key not in _EXTRACTED:
            art = work / f"artifact-{len(_EXTRACTED)}"
            t0 = time.perf_counter()
            deltaformat.extract(base_dir, post_dir, art, name="bench/transfer-t", version="0.0.0",
                                description="transfer benchmark: task T delta on all-MiniLM-L6-v2",
                                force=True, quiet=True)
            info["extract_s"] = time.perf_counter() - t0
            info["artifact_bytes"] = sum(f.stat().st_size for f in art.rglob("*") if f.is_file())
            _EXTRACTED[key] = art
        t0 = time.perf_counter()
        ar = deltaformat.apply([_EXTRACTED[key]], base_prime_dir, out_dir, alphas=[alpha], force=True, quiet=True)
        info["apply_s"] = time.perf_counter() - t0
        info["apply_tensors"] = ar.tensors
    else:
        from safetensors.torch import save_file

        st = paramdelta_in_memory(load_folder_state(base_dir), load_folder_state(post_dir),
                                  load_folder_state(base_prime_dir), alpha)
        out_dir.mkdir(parents=True)
        for f in base_prime_dir.iterdir():
            if f.is_file() and not f.name.endswith(".safetensors"):
                shutil.copy2(f, out_dir / f.name)
        save_file({k: v.contiguous() for k, v in st.items()}, out_dir / "model.safetensors",
                  metadata={"format": "pt"})
    return info


def ulp32(x: torch.Tensor) -> torch.Tensor:
    """Spacing of fp32 numbers at |x| (x in fp64)."""
    m = x.abs().float()
    return (torch.nextafter(m, torch.full_like(m, math.inf)) - m).double()


def compare_paramdelta(got: dict[str, torch.Tensor], base, post, base_prime, alpha: float) -> dict:
    """Compare a ParamΔ folder with base' + α (post − base) computed here.

    The reference is the plain fp32 expression ``bp + α * (post − base)`` (what a user
    would write; the format also keeps Δ in fp32).  An implementation may round
    differently (a fused multiply-add, or a patch that returns post exactly where base'
    equals base at α = 1), so the check allows 1 fp32 ulp at the scale of the largest
    term, max(|base'|, |α Δ|, |sum|).  Also reported: the fraction of elements equal
    bitwise, and the worst distance from the exact (fp64) sum, in the same ulps.
    Non-float tensors must equal base'.
    """
    mismatch = sorted(set(got) ^ set(base_prime))
    n = n_bit = 0
    worst_ulp = worst_ulp64 = worst_abs = 0.0
    for k, bp in base_prime.items():
        if k not in got:
            continue
        g = got[k]
        if g.dtype != bp.dtype or g.shape != bp.shape:
            return {"ok": False, "why": f"{k}: {g.dtype}{tuple(g.shape)} vs {bp.dtype}{tuple(bp.shape)}"}
        if not bp.is_floating_point():
            if not torch.equal(g, bp):
                return {"ok": False, "why": f"{k}: non-float tensor differs from base'"}
            continue
        d = post[k] - base[k]
        ref = bp + alpha * d
        n += g.numel()
        n_bit += int((g.view(torch.int32) == ref.view(torch.int32)).sum()) if g.dtype == torch.float32 \
            else int((g == ref).sum())
        exact = bp.double() + alpha * (post[k].double() - base[k].double())
        scale = torch.maximum(torch.maximum(bp.double().abs(), (alpha * d).double().abs()), exact.abs())
        ulp = ulp32(scale).clamp(min=1e-45)
        diff = (g.double() - ref.double()).abs()
        worst_ulp = max(worst_ulp, float((diff / ulp).max()))
        worst_abs = max(worst_abs, float(diff.max()))
        worst_ulp64 = max(worst_ulp64, float(((g.double() - exact).abs() / ulp).max()))
    return {"ok": not mismatch and worst_ulp <= 1.0, "elements": n, "bitwise_frac": n_bit / max(n, 1),
            "max_ulp": worst_ulp, "max_abs": worst_abs, "max_ulp_vs_fp64": worst_ulp64, "key_mismatch": mismatch[:5]}
