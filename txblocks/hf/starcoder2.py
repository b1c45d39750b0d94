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

from txblocks.hf.decoder_common import EMBED_TOKENS, QKV, attention, decoder_config, qkv_bias
from txblocks.hf.decoder_common import head_dim_field, sizes
from txblocks.hf.family import ConfigView, activation
from txblocks.hf.llama import _family, _window, rope, rope_parameters, single_window
from txblocks.hf.rules import Rule

__all__ = ["STARCODER2"]

WEIGHTS = (
    EMBED_TOKENS,
    QKV,
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
        **sizes(c, n_kv_heads=c.num_key_value_heads),
        "position": rope(c),
        "block": {
            "layout": "pre_norm",
            "norm": {"type": "layernorm", "eps": c.norm_epsilon, "bias": True, "affine": True},
            "attention": attention(c, _window(c.sliding_window), qkv_bias=bias, out_bias=bias),
            "ffn": {"type": "mlp", "hidden": c.intermediate_size, "bias": bias, "dropout": 0.0,
                    "activation": activation(c, "hidden_act")},
            "dropout": c.residual_dropout,
        },
        "embedding": {"dropout": c.embedding_dropout},
        "init_std": c.initializer_range,
    }  # fmt: skip


def config(s: Any) -> dict[str, Any]:
    """Starcoder2Config fields of a spec (checked by converting back)."""
    return {
        **decoder_config(s),
        "rope_parameters": rope_parameters(s.position),
        "norm_epsilon": getattr(s.block.norm, "eps", 1e-5),
        "sliding_window": single_window(s),
        "use_bias": qkv_bias(s),
        "residual_dropout": s.block.dropout,
        "embedding_dropout": s.embedding.dropout,
        **head_dim_field(s),  # not a Starcoder2Config field; read when set
    }


STARCODER2 = _family("starcoder2", "Starcoder2", spec, config, weights=WEIGHTS, ignored={})
