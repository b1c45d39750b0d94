"""OLMo 2 (``Olmo2Model``, ``Olmo2ForCausalLM``) <-> a decoder that norms each branch's
output, with q and k normed over their full width.

OLMo 2 (Team OLMo 2024, "2 OLMo 2 Furious") reorders OLMo's norms: a block is
``h = x + post_attention_layernorm(attn(x))``, ``y = h + post_feedforward_layernorm(mlp(h))``,
no norm on the branch inputs: ``layout: reordered_norm``, whose ``norm1`` / ``norm2`` are
those two RMSNorms (``rms_norm_eps``). Its attention norms the whole q and k projections
before the split into heads (``q_norm`` of ``num_attention_heads · head_dim``, ``k_norm``
of ``num_key_value_heads · head_dim``): ``attention.qk_norm: rmsnorm`` with
``qk_norm_over: width``. The rest is Llama's: q, k, v fused into ``qkv``, SwiGLU, RoPE and
its scalings, GQA, ``attention_bias`` on q, k, v and o.
"""

from __future__ import annotations

from typing import Any

from txblocks.hf.decoder_common import attention, decoder_config, glu, head_dim_field, sizes
from txblocks.hf.decoder_common import qkv_bias
from txblocks.hf.family import ConfigView
from txblocks.hf.llama import PROJECTIONS, _family, rope, rope_parameters
from txblocks.hf.rules import Rule

__all__ = ["OLMO2"]

WEIGHTS = (
    *PROJECTIONS,
    Rule("layers.{i}.post_attention_layernorm.weight", "blocks.{i}.norm1.weight"),
    Rule("layers.{i}.post_feedforward_layernorm.weight", "blocks.{i}.norm2.weight"),
    Rule("layers.{i}.self_attn.q_norm.weight", "blocks.{i}.attention.q_norm.norm.weight"),
    Rule("layers.{i}.self_attn.k_norm.weight", "blocks.{i}.attention.k_norm.norm.weight"),
    Rule("norm.weight", "final_norm.weight"),
)


def spec(c: ConfigView) -> dict[str, Any]:
    """The spec of an Olmo2Config (without head)."""
    bias = bool(c.attention_bias)
    norm = {"type": "rmsnorm", "eps": c.rms_norm_eps}
    return {
        **sizes(c),
        "position": rope(c),
        "block": {
            "layout": "reordered_norm",
            "norm": norm,
            "attention": {
                **attention(c, "causal", qkv_bias=bias, out_bias=bias),
                "qk_norm": norm, "qk_norm_over": "width",
            },
            "ffn": glu(c),
            "dropout": 0.0,
        },
        "embedding": {"dropout": 0.0},
        "init_std": c.initializer_range,
    }  # fmt: skip


def config(s: Any) -> dict[str, Any]:
    """Olmo2Config fields of a spec (checked by converting back)."""
    return {
        **decoder_config(s),
        "rope_parameters": rope_parameters(s.position),
        "rms_norm_eps": getattr(s.block.norm, "eps", 1e-5),
        "attention_bias": qkv_bias(s),
        **head_dim_field(s),  # not an Olmo2Config field; read when set
    }


OLMO2 = _family("olmo2", "Olmo2", spec, config, weights=WEIGHTS, ignored={})
