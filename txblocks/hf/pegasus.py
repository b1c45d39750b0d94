"""Pegasus (``PegasusModel``, ``PegasusForConditionalGeneration``) <-> a pre-norm
encoder–decoder with fixed sinusoidal positions and a norm after each stack.

Pegasus (Zhang et al. 2020): positions from the fixed sinusoid in Hugging Face's "half"
layout (``position: {type: sinusoidal, layout: half}``), no embedding norm, pre-norm
blocks, a ``layer_norm`` closing each stack; see :mod:`txblocks.hf.bart_like`.
"""

from __future__ import annotations

from txblocks.hf.bart_like import Variant, family

__all__ = ["PEGASUS"]

PEGASUS = family(
    "pegasus", "Pegasus", model_type="pegasus", lm_class="PegasusForConditionalGeneration",
    variant=Variant(pre_norm=True, sinusoid=True, embedding_norm=False),
)  # fmt: skip
