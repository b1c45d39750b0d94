"""Phi (``PhiModel``, ``PhiForCausalLM``) <-> a parallel decoder with partial RoPE and GQA.

A Phi block is ``x + attn(ln(x)) + mlp(ln(x))``: txblocks' ``parallel`` layout with one
shared norm (``shared_norm: true``), ``input_layernorm``. RoPE
rotates the first ``partial_rotary_factor`` of each head (halves paired); ``q_proj``,
``k_proj``, ``v_proj`` (biased, GQA) are fused into ``qkv``; ``qk_layernorm`` is a
LayerNorm over each head of q and k before the rotation (``attention.qk_norm``). The LM
head has a bias.
"""

from __future__ import annotations

from typing import Any

from txblocks.hf.decoder_common import EMBED_TOKENS, QKV, decoder_config, sizes
from txblocks.hf.family import ConfigView, activation, causal_lm_family
from txblocks.hf.gpt_neox import partial_rope, partial_rope_parameters
from txblocks.hf.rules import Rule

__all__ = ["PHI"]

WEIGHTS = (
    EMBED_TOKENS,
    Rule("layers.{i}.input_layernorm.{p}", "blocks.{i}.norm1.{p}"),
    QKV,
    Rule("layers.{i}.self_attn.dense.{p}", "blocks.{i}.attention.out.{p}"),
    Rule("layers.{i}.self_attn.q_layernorm.{p}", "blocks.{i}.attention.q_norm.{p}"),
    Rule("layers.{i}.self_attn.k_layernorm.{p}", "blocks.{i}.attention.k_norm.{p}"),
    Rule("layers.{i}.mlp.fc1.{p}", "blocks.{i}.ffn.up.{p}"),
    Rule("layers.{i}.mlp.fc2.{p}", "blocks.{i}.ffn.down.{p}"),
    Rule("final_layernorm.{p}", "final_norm.{p}"),
)  # fmt: skip


def spec(c: ConfigView) -> dict[str, Any]:
    """The spec of a PhiConfig (without head)."""
    d_model, n_heads = c.hidden_size, c.num_attention_heads
    head_dim = c.get("head_dim") or d_model // n_heads
    norm = {"type": "layernorm", "eps": c.layer_norm_eps}
    return {
        **sizes(c, head_dim=head_dim),
        "position": partial_rope(c, head_dim),
        "embedding": {"dropout": c.embd_pdrop},
        "block": {
            "layout": "parallel",
            "shared_norm": True,
            "norm": norm,
            "attention": {"mask": "causal", "bias": True, "fused_qkv": True,
                          "qk_norm": norm if c.qk_layernorm else None,
                          "dropout": c.attention_dropout or 0.0},
            "ffn": {"type": "mlp", "hidden": c.intermediate_size, "bias": True,
                    "activation": activation(c, "hidden_act"), "dropout": 0.0},
            "dropout": c.resid_pdrop,
        },
        "init_std": c.initializer_range,
    }  # fmt: skip


def config(s: Any) -> dict[str, Any]:
    """PhiConfig fields of a spec (checked by converting back)."""
    block = s.block
    return {
        **decoder_config(s, tanh_name="gelu_new"),
        "rope_parameters": partial_rope_parameters(s.position),
        "layer_norm_eps": getattr(block.norm, "eps", 1e-5),
        "qk_layernorm": block.attention.qk_norm is not None,
        "resid_pdrop": block.dropout,
        "embd_pdrop": s.embedding.dropout,
    }


PHI = causal_lm_family("phi", "Phi", spec, config, WEIGHTS, lm_bias=True)
