"""Marian (``MarianModel``, ``MarianMTModel``) <-> a post-norm encoder–decoder with fixed
sinusoidal positions.

MarianMT (Junczys-Dowmunt et al. 2018): BART's post-norm blocks without an embedding norm,
positions from the fixed sinusoid in Hugging Face's "half" layout (``position: {type:
sinusoidal, layout: half}``); see :mod:`txblocks.hf.bart_like`. txblocks has one
vocabulary and shares the encoder's and decoder's tables when ``shared_embeddings``: a
``decoder_vocab_size`` other than ``vocab_size`` and ``share_encoder_decoder_embeddings:
false`` are refused.
"""

from __future__ import annotations

from typing import Any

from txblocks.hf.bart_like import Variant, family
from txblocks.hf.family import ConfigView

__all__ = ["MARIAN"]


def _own_options(c: ConfigView, data: dict[str, Any]) -> None:
    if c.decoder_vocab_size != c.vocab_size:
        c.unsupported("decoder_vocab_size", (
            f"differs from vocab_size ({c.vocab_size}); a txblocks seq2seq model has one "
            "vocabulary"))  # fmt: skip
    if not c.share_encoder_decoder_embeddings:
        c.unsupported("share_encoder_decoder_embeddings", (
            "separate encoder and decoder tables with no `shared` table are not mapped; "
            "only the shared layout of the opus-mt checkpoints is"))  # fmt: skip


MARIAN = family(
    "marian", "Marian", model_type="marian", lm_class="MarianMTModel",
    variant=Variant(pre_norm=False, sinusoid=True, embedding_norm=False),
    spec_extra=_own_options,
    config_extra=lambda s: {"decoder_vocab_size": s.vocab_size,
                            "share_encoder_decoder_embeddings": True},
)  # fmt: skip
