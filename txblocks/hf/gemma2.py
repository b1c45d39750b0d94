"""Gemma 2 (``Gemma2Model``, ``Gemma2ForCausalLM``) <-> Gemma's decoder with sandwich norms,
soft-capped scores and logits, and alternating local and global layers.

Gemma 2 (Gemma Team 2024, "Gemma 2: Improving Open Language Models at a Practical Size")
keeps Gemma's ``rmsnorm {unit_offset: true}`` and ``embedding.scale: sqrt_d_model`` and adds,
each a spec field:

* a norm on each branch's output before the residual add (``post_attention_layernorm``,
  ``post_feedforward_layernorm``): ``block.post_attention_norm`` / ``post_ffn_norm``; the
  ffn's input norm is ``pre_feedforward_layernorm`` (``norm2``);
* attention scores soft-capped, ``c · tanh(s / c)`` with ``c = attn_logit_softcapping``
  (``attention.softcap``; the eager kernel runs it, ``auto`` picks it), and scaled by
  ``query_pre_attn_scalar ** -0.5`` (``attention.scale``);
* the logits soft-capped by ``final_logit_softcapping`` (``head.final_softcap``);
* sliding windows on the layers ``layer_types`` names ``sliding_attention`` (every other
  layer by default), as ``layers:`` overrides.

The weights are Llama's names plus the four norms; the norm weights are copied as stored.
"""

from __future__ import annotations

from typing import Any

from txblocks.hf.decoder_common import attention, decoder_config, glu, qkv_bias, sizes
from txblocks.hf.family import ConfigView, HFFamily, HFHead
from txblocks.hf.llama import PROJECTIONS, layer_types_config, layer_windows, rope
from txblocks.hf.llama import rope_parameters
from txblocks.hf.rules import Rule

__all__ = ["GEMMA2", "layer_windows"]

WEIGHTS = (
    *PROJECTIONS,
    Rule("layers.{i}.input_layernorm.weight", "blocks.{i}.norm1.weight"),
    Rule("layers.{i}.post_attention_layernorm.weight", "blocks.{i}.post_attention_norm.weight"),
    Rule("layers.{i}.pre_feedforward_layernorm.weight", "blocks.{i}.norm2.weight"),
    Rule("layers.{i}.post_feedforward_layernorm.weight", "blocks.{i}.post_ffn_norm.weight"),
    Rule("norm.weight", "final_norm.weight"),
)


def _scale(c: ConfigView, head_dim: int) -> float | None:
    """``attention.scale``: ``query_pre_attn_scalar ** -0.5`` (None when that is the default)."""
    scalar = c.query_pre_attn_scalar
    return None if scalar == head_dim else float(scalar) ** -0.5


def spec(c: ConfigView) -> dict[str, Any]:
    """The spec of a Gemma2Config (without head)."""
    if c.use_bidirectional_attention:
        c.unsupported("use_bidirectional_attention", "a decoder that attends both ways (an "
                      "embedding model's encoder) is not mapped; txblocks decoders are causal")
    head_dim = c.get("head_dim") or c.hidden_size // c.num_attention_heads
    bias = bool(c.attention_bias)
    mask, layers = layer_windows(c)
    return {
        **sizes(c, head_dim=head_dim),
        "position": rope(c),
        "block": {
            "layout": "pre_norm",
            "norm": {"type": "rmsnorm", "eps": c.rms_norm_eps, "unit_offset": True},
            "post_attention_norm": True,
            "post_ffn_norm": True,
            "attention": {
                **attention(c, mask, qkv_bias=bias, out_bias=bias),
                "softcap": c.attn_logit_softcapping, "scale": _scale(c, head_dim),
            },
            "ffn": glu(c, activation_key="hidden_activation"),
            "dropout": 0.0,
        },
        "embedding": {"scale": "sqrt_d_model", "dropout": 0.0},
        "layers": layers,
        "init_std": c.initializer_range,
    }  # fmt: skip


def _scalar(scale: float | None, head_dim: int) -> float | int:
    """``query_pre_attn_scalar`` of an ``attention.scale`` (an int where it is one)."""
    if scale is None:
        return head_dim
    scalar = scale**-2
    return round(scalar) if abs(scalar - round(scalar)) < 1e-9 * scalar else scalar


def config(s: Any) -> dict[str, Any]:
    """Gemma2Config fields of a spec (checked by converting back)."""
    attention = s.block.attention
    return {
        **decoder_config(s, "hidden_activation"),
        **layer_types_config(s),
        "head_dim": s.head_size,
        "rope_parameters": rope_parameters(s.position),
        "rms_norm_eps": getattr(s.block.norm, "eps", 1e-6),
        "attention_bias": qkv_bias(s),
        "query_pre_attn_scalar": _scalar(attention.scale, s.head_size),
        "attn_logit_softcapping": attention.softcap,
    }


GEMMA2 = HFFamily(
    name="gemma2",
    arch="decoder",
    model_type="gemma2",
    config_class="Gemma2Config",
    spec=spec,
    config=config,
    weights=WEIGHTS,
    heads=(
        HFHead("Gemma2Model", None),
        HFHead(
            "Gemma2ForCausalLM", "lm",
            spec=lambda c: {"type": "lm", "tie_embeddings": c.tie_word_embeddings, "bias": False,
                            "final_softcap": c.final_logit_softcapping},
            config=lambda head: {"tie_word_embeddings": head["tie_embeddings"],
                                 "final_logit_softcapping": head["final_softcap"]},
            weights=(Rule("lm_head.weight", "head.proj.weight"),),
        ),
    ),
    ignored={"final_logit_softcapping": "read by Gemma2ForCausalLM's head only (head.final_softcap)"},
)  # fmt: skip
