"""OLMo (``OlmoModel``, ``OlmoForCausalLM``) <-> Llama's decoder with parameter-free LayerNorms.

OLMo (Groeneveld et al. 2024, §2.1) normalizes with a LayerNorm that has no weight and no
bias (``OlmoLayerNorm``: eps fixed at 1e-5, computed in float32):
``layernorm {eps: 1e-5, affine: false}``. Nothing else differs from Llama: q, k, v fused
into ``qkv``, SwiGLU (``gate_proj``, ``up_proj`` into ``gate_up``), RoPE, GQA;
``attention_bias`` sets the q, k, v and o biases. The norms have no weights, so they have
no rules.

Refused: ``clip_qkv`` (HF clamps q, k and v to ``[-c, c]``; txblocks has no clamp).
"""

from __future__ import annotations

from typing import Any

from txblocks.hf.decoder_common import attention, decoder_config, glu, head_dim_field, sizes
from txblocks.hf.decoder_common import qkv_bias
from txblocks.hf.family import ConfigView
from txblocks.hf.llama import PROJECTIONS, _family, rope, rope_parameters

__all__ = ["OLMO"]

#: HF's ``OlmoLayerNorm`` hard-codes its epsilon.
EPS = 1e-5

WEIGHTS = PROJECTIONS


def spec(c: ConfigView) -> dict[str, Any]:
    """The spec of an OlmoConfig (without head)."""
    if c.clip_qkv is not None:
        c.unsupported("clip_qkv", "HF clamps q, k and v to [-clip_qkv, clip_qkv]; txblocks' "
                      "attention has no clamp")
    bias = bool(c.attention_bias)
    return {
        **sizes(c, n_kv_heads=c.num_key_value_heads),
        "position": rope(c),
        "block": {
            "layout": "pre_norm",
            "norm": {"type": "layernorm", "eps": EPS, "affine": False, "bias": False},
            "attention": attention(c, "causal", qkv_bias=bias, out_bias=bias),
            "ffn": glu(c),
            "dropout": 0.0,
        },
        "embedding": {"dropout": 0.0},
        "init_std": c.initializer_range,
    }  # fmt: skip


def config(s: Any) -> dict[str, Any]:
    """OlmoConfig fields of a spec (checked by converting back)."""
    return {
        **decoder_config(s),
        "rope_parameters": rope_parameters(s.position),
        "attention_bias": qkv_bias(s),
        **head_dim_field(s),  # not an OlmoConfig field; read when set
    }


OLMO = _family("olmo", "Olmo", spec, config, weights=WEIGHTS, ignored={})
