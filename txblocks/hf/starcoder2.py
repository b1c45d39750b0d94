"""Starcoder2 (``Starcoder2Model``, ``Starcoder2ForCausalLM``) <-> a pre-norm LayerNorm
decoder with RoPE, GQA and a plain (biased) MLP.

StarCoder 2 (Lozhkov et al. 2024): biased LayerNorms (``norm_epsilon``), q, k, v fused
into ``qkv`` (rows q, k, v), ``c_fc`` / ``c_proj`` the MLP's ``up`` / ``down``
(``hidden_act``, tanh GELU in the released models); ``use_bias`` sets the biases of every
projection. ``sliding_window`` masks every layer (Mistral's semantics),
``residual_dropout`` drops both residual branches (``block.dropout``),
``embedding_dropout`` the embeddings.
"""

from __future__ import annotations

from typing import Any

from txblocks.hf.family import ConfigView, activation, ffn_hidden, hf_activation
from txblocks.hf.llama import _family, _qkv_bias, _window, _windows, rope, rope_parameters
from txblocks.hf.rules import Rule

__all__ = ["STARCODER2"]

WEIGHTS = (
    Rule("embed_tokens.weight", "embeddings.tokens.weight"),
    Rule(
        (
            "layers.{i}.self_attn.q_proj.{p}",
            "layers.{i}.self_attn.k_proj.{p}",
            "layers.{i}.self_attn.v_proj.{p}",
        ),
        "blocks.{i}.attention.qkv.{p}",
        "concat",
    ),
    Rule("layers.{i}.self_attn.o_proj.{p}", "blocks.{i}.attention.out.{p}"),
    Rule("layers.{i}.mlp.c_fc.{p}", "blocks.{i}.ffn.up.{p}"),
    Rule("layers.{i}.mlp.c_proj.{p}", "blocks.{i}.ffn.down.{p}"),
    Rule("layers.{i}.input_layernorm.{p}", "blocks.{i}.norm1.{p}"),
    Rule("layers.{i}.post_attention_layernorm.{p}", "blocks.{i}.norm2.{p}"),
    Rule("norm.{p}", "final_norm.{p}"),
)


def spec(c: ConfigView) -> dict[str, Any]:
    """The spec of a Starcoder2Config (without head)."""
    bias = bool(c.use_bias)
    return {
        "arch": "decoder",
        "vocab_size": c.vocab_size,
        "max_seq_len": c.max_position_embeddings,
        "d_model": c.hidden_size,
        "n_layers": c.num_hidden_layers,
        "n_heads": c.num_attention_heads,
        "n_kv_heads": c.num_key_value_heads,
        "head_dim": c.get("head_dim") or c.hidden_size // c.num_attention_heads,
        "position": rope(c),
        "block": {
            "layout": "pre_norm",
            "norm": {"type": "layernorm", "eps": c.norm_epsilon, "bias": True, "affine": True},
            "attention": {
                "mask": _window(c.sliding_window), "bias": bias, "qkv_bias": bias,
                "out_bias": bias, "fused_qkv": True, "dropout": c.attention_dropout,
            },
            "ffn": {"type": "mlp", "hidden": c.intermediate_size, "bias": bias, "dropout": 0.0,
                    "activation": activation(c, "hidden_act")},
            "dropout": c.residual_dropout,
        },
        "embedding": {"dropout": c.embedding_dropout},
        "init_std": c.initializer_range,
    }  # fmt: skip


def config(s: Any) -> dict[str, Any]:
    """Starcoder2Config fields of a spec (checked by converting back)."""
    block = s.block
    windows = set(_windows(s))
    out = {
        "vocab_size": s.vocab_size,
        "max_position_embeddings": s.max_seq_len,
        "hidden_size": s.d_model,
        "num_hidden_layers": s.n_layers,
        "num_attention_heads": s.n_heads,
        "num_key_value_heads": s.kv_heads,
        "rope_parameters": rope_parameters(s.position),
        "norm_epsilon": getattr(block.norm, "eps", 1e-5),
        "sliding_window": windows.pop() if len(windows) == 1 else None,
        "use_bias": _qkv_bias(s),
        "attention_dropout": block.attention.dropout,
        "residual_dropout": block.dropout,
        "embedding_dropout": s.embedding.dropout,
        "intermediate_size": ffn_hidden(block.ffn, s.d_model),
        "hidden_act": hf_activation(getattr(block.ffn, "activation", None)),
        "initializer_range": s.init_std,
    }
    if s.head_size != s.d_model // s.n_heads:
        out["head_dim"] = s.head_size  # not a Starcoder2Config field; read when set
    return out


STARCODER2 = _family("starcoder2", "Starcoder2", spec, config, weights=WEIGHTS, ignored={})
