"""GPT-J (``GPTJModel``, ``GPTJForCausalLM``) <-> a parallel decoder with interleaved, partial RoPE.

A GPT-J block is ``x + attn(ln_1(x)) + mlp(ln_1(x))``: txblocks' ``parallel`` layout with
one shared norm (``shared_norm: true``), ``ln_1``. The first ``rotary_dim`` dims of
each head rotate, adjacent dims paired (``rope {fraction: rotary_dim / head_dim,
interleaved: true}``, theta 10000). ``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj`` have
no bias; the LM head has one.
"""

from __future__ import annotations

import math
from typing import Any

from txblocks.hf.family import ConfigView, activation, causal_lm_family
from txblocks.hf.gpt2 import gpt2_config, gpt2_sizes
from txblocks.hf.rules import Rule

__all__ = ["GPTJ", "rope_fraction"]


WEIGHTS = (
    Rule("wte.weight", "embeddings.tokens.weight"),
    Rule("h.{i}.ln_1.{p}", "blocks.{i}.norm1.{p}"),
    Rule(("h.{i}.attn.q_proj.weight", "h.{i}.attn.k_proj.weight", "h.{i}.attn.v_proj.weight"),
         "blocks.{i}.attention.qkv.weight", "concat"),
    Rule("h.{i}.attn.out_proj.weight", "blocks.{i}.attention.out.weight"),
    Rule("h.{i}.mlp.fc_in.{p}", "blocks.{i}.ffn.up.{p}"),
    Rule("h.{i}.mlp.fc_out.{p}", "blocks.{i}.ffn.down.{p}"),
    Rule("ln_f.{p}", "final_norm.{p}"),
)  # fmt: skip


def rope_fraction(rotary_dim: int, head_dim: int) -> float:
    """The ``fraction`` for which ``int(head_dim * fraction) == rotary_dim`` (txblocks' rule)."""
    fraction = rotary_dim / head_dim
    while int(head_dim * fraction) < rotary_dim:  # 0.999... from rounding
        fraction = math.nextafter(fraction, 2.0)
    return fraction


def spec(c: ConfigView) -> dict[str, Any]:
    """The spec of a GPTJConfig (without head)."""
    d_model, n_heads = c.n_embd, c.n_head
    head_dim = d_model // n_heads
    rotary_dim = c.rotary_dim
    if rotary_dim is None:  # HF then rotates whole heads (n_head 1 only; others fail)
        rotary_dim = head_dim
    if not 0 < rotary_dim <= head_dim or rotary_dim % 2:
        why = f"must be even and between 2 and the head size {head_dim} (HF slices heads by it)"
        c.unsupported("rotary_dim", why)
        rotary_dim = head_dim
    return {
        **gpt2_sizes(c),
        "position": {"type": "rope", "theta": 10000.0, "interleaved": True,
                     "fraction": rope_fraction(rotary_dim, head_dim)},
        "embedding": {"dropout": c.embd_pdrop},
        "block": {
            "layout": "parallel",
            "shared_norm": True,
            "norm": {"type": "layernorm", "eps": c.layer_norm_epsilon},
            "attention": {"mask": "causal", "bias": False, "fused_qkv": True,
                          "dropout": c.attn_pdrop},
            "ffn": {"type": "mlp", "hidden": c.n_inner or 4 * d_model, "bias": True,
                    "activation": activation(c, "activation_function"), "dropout": 0.0},
            "dropout": c.resid_pdrop,
        },
        "init_std": c.initializer_range,
    }  # fmt: skip


def config(s: Any) -> dict[str, Any]:
    """GPTJConfig fields of a spec (checked by converting back)."""
    rotary_dim = int(s.head_size * getattr(s.position, "fraction", 1.0))
    return {**gpt2_config(s), "rotary_dim": rotary_dim}


GPTJ = causal_lm_family("gptj", "GPTJ", spec, config, WEIGHTS, lm_bias=True)
