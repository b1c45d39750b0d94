"""Pieces shared by the decoder families named the Llama way (``embed_tokens``,
``layers.{i}.self_attn.q_proj``, ``num_key_value_heads``): the spec's sizes and the HF
config's, the fused attention and GLU entries of a block, and the weight rules they share.

Each family keeps its own options, norms and refusals; only what is written the same way
in several families lives here.
"""

from __future__ import annotations

from typing import Any

from txblocks.hf.family import ConfigView, activation, ffn_hidden, hf_activation
from txblocks.hf.rules import Rule

__all__ = [
    "EMBED_TOKENS",
    "QKV",
    "attention",
    "config_sizes",
    "decoder_config",
    "decoder_sizes",
    "glu",
    "head_dim_field",
    "qkv_bias",
    "sizes",
]

#: The token table.
EMBED_TOKENS = Rule("embed_tokens.weight", "embeddings.tokens.weight")

#: ``q_proj``, ``k_proj``, ``v_proj`` (weights and biases) fused into ``qkv``, rows q, k, v.
QKV = Rule(
    (
        "layers.{i}.self_attn.q_proj.{p}",
        "layers.{i}.self_attn.k_proj.{p}",
        "layers.{i}.self_attn.v_proj.{p}",
    ),
    "blocks.{i}.attention.qkv.{p}",
    "concat",
)


def decoder_sizes(c: ConfigView) -> dict[str, Any]:
    """The spec's ``arch``, vocabulary, length, width, depth and heads."""
    return {
        "arch": "decoder",
        "vocab_size": c.vocab_size,
        "max_seq_len": c.max_position_embeddings,
        "d_model": c.hidden_size,
        "n_layers": c.num_hidden_layers,
        "n_heads": c.num_attention_heads,
    }


def sizes(c: ConfigView, *, n_kv_heads: Any = None, head_dim: Any = None) -> dict[str, Any]:
    """:func:`decoder_sizes`, with the kv heads and the head size.

    Args:
        c: the config.
        n_kv_heads: given where a family reads it its own way; by default
            ``num_key_value_heads`` (``num_attention_heads`` where that is None).
        head_dim: given where a family reads it its own way; by default the config's
            ``head_dim`` where set, else ``hidden_size // num_attention_heads``.
    """
    out = decoder_sizes(c)
    if n_kv_heads is None:
        n_kv_heads = c.num_key_value_heads or c.num_attention_heads
    if head_dim is None:
        head_dim = c.get("head_dim") or c.hidden_size // c.num_attention_heads
    return {**out, "n_kv_heads": n_kv_heads, "head_dim": head_dim}


def attention(c: ConfigView, mask: Any, *, qkv_bias: bool, out_bias: bool) -> dict[str, Any]:
    """The block's fused attention (``bias`` is the output projection's)."""
    return {"mask": mask, "bias": out_bias, "qkv_bias": qkv_bias, "out_bias": out_bias,
            "fused_qkv": True, "dropout": c.attention_dropout}  # fmt: skip


def glu(c: ConfigView, *, bias: bool = False, activation_key: str = "hidden_act") -> dict[str, Any]:
    """The block's GLU ffn (``intermediate_size`` wide, activation ``activation_key``)."""
    return {"type": "glu", "hidden": c.intermediate_size, "bias": bias, "dropout": 0.0,
            "activation": activation(c, activation_key)}  # fmt: skip


def config_sizes(s: Any, kv_key: str | None = "num_key_value_heads") -> dict[str, Any]:
    """The HF config's sizes of a spec; the kv heads under ``kv_key`` (None: a config
    without that option)."""
    out = {
        "vocab_size": s.vocab_size,
        "max_position_embeddings": s.max_seq_len,
        "hidden_size": s.d_model,
        "num_hidden_layers": s.n_layers,
        "num_attention_heads": s.n_heads,
    }
    return out if kv_key is None else {**out, kv_key: s.kv_heads}


def qkv_bias(s: Any) -> bool:
    """Whether the spec's q, k, v projections have biases (``qkv_bias``, else ``bias``)."""
    attention = s.block.attention
    return bool(attention.bias if attention.qkv_bias is None else attention.qkv_bias)


def decoder_config(
    s: Any, activation_key: str = "hidden_act", tanh_name: str = "gelu_pytorch_tanh"
) -> dict[str, Any]:
    """:func:`config_sizes`, with the attention dropout, the ffn's width and activation
    (under ``activation_key``; tanh GELU named ``tanh_name``) and the init std."""
    block = s.block
    return {
        **config_sizes(s),
        "attention_dropout": block.attention.dropout,
        "intermediate_size": ffn_hidden(block.ffn, s.d_model),
        activation_key: hf_activation(getattr(block.ffn, "activation", None), tanh_name),
        "initializer_range": s.init_std,
    }


def head_dim_field(s: Any) -> dict[str, Any]:
    """``{"head_dim": ...}`` where the spec's head size is not ``d_model // n_heads``, else
    nothing: for configs without a ``head_dim`` field that read it when set."""
    return {} if s.head_size == s.d_model // s.n_heads else {"head_dim": s.head_size}
