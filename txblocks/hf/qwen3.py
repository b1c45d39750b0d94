"""Qwen3 (``Qwen3Model``, ``Qwen3ForCausalLM``) <-> Qwen2's decoder with QK-norm.

Qwen3 (Yang et al. 2025) is Qwen2's decoder (:mod:`txblocks.hf.llama`: rope, GQA, SwiGLU,
sliding windows on the layers ``layer_types`` names) with three changes:

* ``q_norm`` / ``k_norm``: one RMSNorm over ``head_dim`` shared by all heads, applied to
  q and k before the rotation (``attention.qk_norm: {type: rmsnorm, eps: rms_norm_eps}``;
  txblocks' ``Attention`` normalizes q and k before rotating them too);
* ``attention_bias`` sets the q, k, v *and* o biases (Qwen2: q, k, v only);
* ``head_dim`` is a config field (128 in the released models).
"""

from __future__ import annotations

from typing import Any

from txblocks.hf.decoder_common import qkv_bias
from txblocks.hf.family import ConfigView
from txblocks.hf.llama import WEIGHTS as LLAMA_WEIGHTS
from txblocks.hf.llama import _family, qwen2_config, qwen2_spec
from txblocks.hf.rules import Rule

__all__ = ["QWEN3"]

WEIGHTS = (
    *LLAMA_WEIGHTS,
    Rule("layers.{i}.self_attn.q_norm.weight", "blocks.{i}.attention.q_norm.weight"),
    Rule("layers.{i}.self_attn.k_norm.weight", "blocks.{i}.attention.k_norm.weight"),
)


def spec(c: ConfigView) -> dict[str, Any]:
    """The spec of a Qwen3Config (without head)."""
    data = qwen2_spec(c)
    bias = bool(c.attention_bias)
    attention = data["block"]["attention"]
    attention.update(bias=bias, qkv_bias=bias, out_bias=bias,
                     qk_norm={"type": "rmsnorm", "eps": c.rms_norm_eps})  # fmt: skip
    return data


def config(s: Any) -> dict[str, Any]:
    """Qwen3Config fields of a spec (checked by converting back)."""
    return {**qwen2_config(s), "attention_bias": qkv_bias(s)}


QWEN3 = _family("qwen3", "Qwen3", spec, config, weights=WEIGHTS, ignored={})
