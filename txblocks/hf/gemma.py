"""Gemma (``GemmaModel``, ``GemmaForCausalLM``) <-> Llama's decoder with Gemma's norm and
embedding scale.

Gemma (Gemma Team 2024) differs from Llama in two places, both spec fields:

* every RMSNorm scales by ``(1 + w)``: ``rmsnorm {unit_offset: true}``; the weights are
  copied as HF stores them (no 1 added at load time);
* the token embeddings are multiplied by ``sqrt(hidden_size)``:
  ``embedding.scale: sqrt_d_model``.

The weight names are Llama's; ``attention_bias`` sets the q, k, v and o biases, and
``head_dim`` is read from the config (256 in Gemma 7B, not ``hidden_size / heads``).
"""

from __future__ import annotations

from typing import Any

from txblocks.hf.decoder_common import qkv_bias
from txblocks.hf.family import ConfigView
from txblocks.hf.llama import WEIGHTS, _common_config, _family, _spec

__all__ = ["GEMMA"]


def spec(c: ConfigView) -> dict[str, Any]:
    """The spec of a GemmaConfig (without head)."""
    if c.use_bidirectional_attention:
        c.unsupported("use_bidirectional_attention", "a decoder that attends both ways (an "
                      "embedding model's encoder) is not mapped; txblocks decoders are causal")
    bias = bool(c.attention_bias)
    data = _spec(c, qkv_bias=bias, out_bias=bias, mlp_bias=False, mask="causal", layers=[])
    data["block"]["norm"]["unit_offset"] = True
    data["embedding"]["scale"] = "sqrt_d_model"
    return data


def config(s: Any) -> dict[str, Any]:
    """GemmaConfig fields of a spec (checked by converting back)."""
    return {**_common_config(s), "attention_bias": qkv_bias(s)}


GEMMA = _family("gemma", "Gemma", spec, config, weights=WEIGHTS, ignored={})
