"""UMT5 (``UMT5Model``, ``UMT5ForConditionalGeneration``, ``UMT5EncoderModel``) <-> T5's
pre-norm RMSNorm encoder–decoder with a relative-bias table in every layer.

UMT5 (Chung et al. 2023, "UniMax: Fairer and More Effective Language Sampling for
Large-Scale Multilingual Pretraining") is mT5's network (:mod:`txblocks.hf.t5`: the same
weight names, buckets, unscaled scores, gated GELU by default) in which each layer's
self-attention has its own ``relative_attention_bias`` (T5: block 0's serves its stack):
``position: {type: relative_bias, per_layer: true}``, ``encoder.block.{i}...`` →
``encoder.position.relative_attention_bias.{i}`` (and the decoder's likewise); buckets are
bidirectional in the encoder and causal in the decoder, cross-attention has none.

The LM head scales the decoder output by ``d_model ** -0.5`` when ``scale_decoder_outputs``
(transformers 5; set from ``tie_word_embeddings`` at creation, which ``UMT5Config`` then
forces to true): :func:`txblocks.hf.t5.lm_head` declares it for this class. Whether the head
is tied is read from the model (a config alone: tied, as the class builds it).
"""

from __future__ import annotations

from typing import Any

from txblocks.hf.family import HFFamily, HFHead
from txblocks.hf.rules import Rule
from txblocks.hf.t5 import _IGNORED, ENCODER_WEIGHTS, WEIGHTS, _config, lm_head, t5_scaled
from txblocks.hf.t5 import config as t5_config
from txblocks.hf.t5 import encoder_spec as t5_encoder_spec
from txblocks.hf.t5 import spec as t5_spec

__all__ = ["UMT5", "UMT5_ENCODER"]


def _per_layer(rules: tuple[Rule, ...], stacks: dict[str, str]) -> tuple[Rule, ...]:
    """T5's rules with each stack's one bias table (block 0's) replaced by one per layer."""
    kept = tuple(r for r in rules if not r.tx.endswith("position.relative_attention_bias.weight"))
    return (*kept, *(
        Rule(f"{stack}.block.{{i}}.layer.0.SelfAttention.relative_attention_bias.weight",
             f"{tx}position.relative_attention_bias.{{i}}.weight")
        for stack, tx in stacks.items()
    ))  # fmt: skip


WEIGHTS_PER_LAYER = _per_layer(WEIGHTS, {"encoder": "encoder.", "decoder": "decoder."})
ENCODER_WEIGHTS_PER_LAYER = _per_layer(ENCODER_WEIGHTS, {"encoder": ""})


def _per_layer_position(data: dict[str, Any]) -> dict[str, Any]:
    """T5's spec with one bias table per layer."""
    data["position"]["per_layer"] = True
    return data


_UMT5_IGNORED = {**_IGNORED,
                 "scale_decoder_outputs": "read by UMT5ForConditionalGeneration's head only"}

UMT5 = HFFamily(
    name="umt5",
    arch="seq2seq",
    model_type="umt5",
    config_class="UMT5Config",
    spec=lambda c: _per_layer_position(t5_spec(c)),
    config=t5_config,
    weights=WEIGHTS_PER_LAYER,
    heads=(
        HFHead("UMT5Model", None),
        lm_head("UMT5ForConditionalGeneration", model_type="umt5", scaled=t5_scaled,
                scaled_config=lambda scaled: {"tie_word_embeddings": scaled},
                tied_without_model=lambda scaled: True),
    ),
    ignored=_UMT5_IGNORED,
)  # fmt: skip

UMT5_ENCODER = HFFamily(
    name="umt5_encoder",
    arch="encoder",
    model_type="umt5",
    config_class="UMT5Config",
    spec=lambda c: _per_layer_position(t5_encoder_spec(c)),
    config=_config,
    weights=ENCODER_WEIGHTS_PER_LAYER,
    heads=(HFHead("UMT5EncoderModel", None),),
    ignored=_UMT5_IGNORED,
)
