"""mT5 (``MT5Model``, ``MT5ForConditionalGeneration``, ``MT5EncoderModel``) <-> T5's
pre-norm RMSNorm encoder–decoder.

mT5 (Xue et al. 2021) is T5 v1.1's network under its own config class and ``model_type``
(:mod:`txblocks.hf.t5`: the same weight names, relative position buckets, gated GELU by
default). One behaviour differs and is declared here, by class: ``MT5Config`` forces
``tie_word_embeddings: true``, yet ``MT5ForConditionalGeneration`` never multiplies the
decoder output by ``d_model ** -0.5``, so its head has no scale (``head.scale: null``).
T5's head entry refuses an mT5 config rather than reading T5's flag for it
(:func:`txblocks.hf.t5.lm_head`). Whether the head is tied is read from the model
(a config alone: tied, as the class builds it).
"""

from __future__ import annotations

from txblocks.hf.family import HFFamily, HFHead
from txblocks.hf.t5 import (
    _IGNORED, ENCODER_WEIGHTS, WEIGHTS, _config, config, encoder_spec, lm_head, spec,
)  # fmt: skip

__all__ = ["MT5", "MT5_ENCODER"]

MT5 = HFFamily(
    name="mt5",
    arch="seq2seq",
    model_type="mt5",
    config_class="MT5Config",
    spec=spec,
    config=config,
    weights=WEIGHTS,
    heads=(
        HFHead("MT5Model", None),
        lm_head("MT5ForConditionalGeneration", model_type="mt5", scaled=lambda c: False,
                scaled_config=lambda scaled: {}, tied_without_model=lambda scaled: True),
    ),
    ignored=_IGNORED,
)  # fmt: skip

MT5_ENCODER = HFFamily(
    name="mt5_encoder",
    arch="encoder",
    model_type="mt5",
    config_class="MT5Config",
    spec=encoder_spec,
    config=_config,
    weights=ENCODER_WEIGHTS,
    heads=(HFHead("MT5EncoderModel", None),),
    ignored=_IGNORED,
)
