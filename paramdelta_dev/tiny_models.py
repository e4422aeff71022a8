"""Tiny real models for tests: transformers' Llama, random init, trained a few real steps.

base      random init, saved in bf16 (sharded)
post      base + a few AdamW steps on one task (the "instruct" model), with a tokenizer and chat template
new base  base + a few steps on other data (the "updated base")
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from paramdelta_dev import llama

VOCAB = 96
CHAT_TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"


def llama_config(vocab: int = VOCAB, tie: bool = False):  # noqa: ANN201 - transformers.LlamaConfig
    from transformers import LlamaConfig

    layout = llama.llama_config(hidden=32, intermediate=64, layers=2, vocab=vocab, heads=4, kv_heads=2, max_positions=64,
                                tie=tie, rms_norm_eps=1e-6)  # transformers' default eps: the models tests were written on
    fields = {k: v for k, v in layout.items() if k not in ("architectures", "model_type", "torch_dtype")}
    return LlamaConfig(**fields, pad_token_id=0)


def new_model(seed: int, vocab: int = VOCAB, tie: bool = False):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(llama_config(vocab, tie)).to(torch.float32)


def train(model, seed: int, steps: int = 3, lr: float = 3e-3):
    """A few real optimizer steps of next-token prediction on random sequences."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        ids = torch.randint(3, model.config.vocab_size, (4, 16), generator=g)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    return model


def save(model, folder: Path, dtype=torch.bfloat16, shard: str | None = "40KB", tokenizer: bool = False) -> Path:
    model = model.to(dtype)
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(folder, **kwargs)
    model.to(torch.float32)
    if tokenizer:
        save_tokenizer(folder, model.config.vocab_size)
    return folder


def save_tokenizer(folder: Path, vocab: int = VOCAB) -> None:
    """A real word-level fast tokenizer with a chat template, built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(vocab - 4)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2, "max_new_tokens": 8}))


def make_trio(root: Path, *, tie: bool = False, vocab: int = VOCAB, post_vocab: int | None = None) -> tuple[Path, Path, Path]:
    """base, post and new base folders under ``root`` (bf16, sharded)."""
    base = new_model(0, vocab, tie)
    save(base, root / "base")
    post = train(new_model(0, vocab, tie), seed=1)
    if post_vocab and post_vocab != vocab:
        post.resize_token_embeddings(post_vocab)
        post.config.vocab_size = post_vocab
        post = train(post, seed=11, steps=1)
    save(post, root / "post", tokenizer=True)
    newb = train(new_model(0, vocab, tie), seed=2, steps=2)
    save(newb, root / "newbase")
    return root / "base", root / "post", root / "newbase"


def load_state(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a model folder (via safetensors, the reference reader)."""
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out
