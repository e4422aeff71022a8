"""The Llama checkpoint layout, written once: a config.json and the tensor names and shapes it implies.

Benchmarks generate stand-in weights in this layout without transformers; the tests' tiny models
(``paramdelta_dev.tiny_models``) build transformers' LlamaConfig from the same config.
"""

from __future__ import annotations

from typing import Any


def llama_config(*, hidden: int, intermediate: int, layers: int, vocab: int, heads: int, kv_heads: int | None = None,
                 max_positions: int = 2048, tie: bool = False, rms_norm_eps: float = 1e-5,
                 dtype: str = "bfloat16") -> dict[str, Any]:
    """A Hugging Face Llama config.json (``LlamaForCausalLM``); ``kv_heads`` defaults to ``heads`` (no GQA)."""
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
        "intermediate_size": intermediate, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv_heads or heads, "vocab_size": vocab, "max_position_embeddings": max_positions,
        "rms_norm_eps": rms_norm_eps, "tie_word_embeddings": tie, "torch_dtype": dtype,
        "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
    }


def llama_shapes(cfg: dict[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
    """Every weight of ``cfg``'s model in the order transformers saves them: (name, shape)."""
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = h // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (v, h))]
    for k in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{k}."
        out += [(p + "input_layernorm.weight", (h,))]
        out += [(p + "self_attn.q_proj.weight", (h, h)), (p + "self_attn.k_proj.weight", (kv, h)),
                (p + "self_attn.v_proj.weight", (kv, h)), (p + "self_attn.o_proj.weight", (h, h))]
        out += [(p + "post_attention_layernorm.weight", (h,))]
        out += [(p + "mlp.gate_proj.weight", (i, h)), (p + "mlp.up_proj.weight", (i, h)), (p + "mlp.down_proj.weight", (h, i))]
    out += [("model.norm.weight", (h,))]
    if not cfg.get("tie_word_embeddings"):
        out += [("lm_head.weight", (v, h))]
    return out
