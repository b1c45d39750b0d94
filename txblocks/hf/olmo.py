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

from txblocks.hf.family import ConfigView, activation, ffn_hidden, hf_activation
from txblocks.hf.llama import WEIGHTS as LLAMA_WEIGHTS
from txblocks.hf.llama import _family, _qkv_bias, rope, rope_parameters

__all__ = ["OLMO"]

#: HF's ``OlmoLayerNorm`` hard-codes its epsilon.
EPS = 1e-5

WEIGHTS = tuple(rule for rule in LLAMA_WEIGHTS if "norm" not in rule.tx)


def spec(c: ConfigView) -> dict[str, Any]:
    """The spec of an OlmoConfig (without head)."""
    if c.clip_qkv is not None:
        c.unsupported("clip_qkv", "HF clamps q, k and v to [-clip_qkv, clip_qkv]; txblocks' "
                      "attention has no clamp")
    bias = bool(c.attention_bias)
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
            "norm": {"type": "layernorm", "eps": EPS, "affine": False, "bias": False},
            "attention": {
                "mask": "causal", "bias": bias, "qkv_bias": bias, "out_bias": bias,
                "fused_qkv": True, "dropout": c.attention_dropout,
            },
            "ffn": {"type": "glu", "hidden": c.intermediate_size, "bias": False, "dropout": 0.0,
                    "activation": activation(c, "hidden_act")},
            "dropout": 0.0,
        },
        "embedding": {"dropout": 0.0},
        "init_std": c.initializer_range,
    }  # fmt: skip


def config(s: Any) -> dict[str, Any]:
    """OlmoConfig fields of a spec (checked by converting back)."""
    block = s.block
    out = {
        "vocab_size": s.vocab_size,
        "max_position_embeddings": s.max_seq_len,
        "hidden_size": s.d_model,
        "num_hidden_layers": s.n_layers,
        "num_attention_heads": s.n_heads,
        "num_key_value_heads": s.kv_heads,
        "rope_parameters": rope_parameters(s.position),
        "attention_bias": _qkv_bias(s),
        "attention_dropout": block.attention.dropout,
        "intermediate_size": ffn_hidden(block.ffn, s.d_model),
        "hidden_act": hf_activation(getattr(block.ffn, "activation", None)),
        "initializer_range": s.init_std,
    }
    if s.head_size != s.d_model // s.n_heads:
        out["head_dim"] = s.head_size  # not an OlmoConfig field; read when set
    return out


OLMO = _family("olmo", "Olmo", spec, config, weights=WEIGHTS, ignored={})
