"""MBart (``MBartModel``, ``MBartForConditionalGeneration``) <-> a pre-norm encoder–decoder
with learned positions, an embedding norm and a norm after each stack.

mBART (Liu et al. 2020) is BART with pre-norm blocks and a ``layer_norm`` closing each
stack (``{encoder,decoder}.final_norm``); see :mod:`txblocks.hf.bart_like`.
"""

from __future__ import annotations

from txblocks.hf.bart_like import Variant, family

__all__ = ["MBART"]

MBART = family(
    "mbart", "MBart", model_type="mbart", lm_class="MBartForConditionalGeneration",
    variant=Variant(pre_norm=True, sinusoid=False, embedding_norm=True),
    ignored={"classifier_dropout": "read only by MBartForSequenceClassification",
             "num_labels": "read only by MBartForSequenceClassification"},
)  # fmt: skip
