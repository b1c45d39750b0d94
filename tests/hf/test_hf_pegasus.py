"""Pegasus: a pre-norm encoder–decoder with a norm after each stack and the fixed "half"
sinusoid, same numbers as Hugging Face.

Tiny random models (d_model 48, 6 heads, 2 encoder and 3 decoder layers), every parameter
and ``final_logits_bias`` perturbed (the sinusoid tables computed again: they are fixed),
query and key weights scaled up, right-padded sources and targets, fp32, eval mode: encoder
output, decoder hidden states and logits within 1e-4 on real positions, greedy generation
token for token, ``to_hf(from_hf(m))`` equal to ``m``. A stored table that is not the
sinusoid is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

transformers = pytest.importorskip("transformers")

from txblocks.hf import HFConversionError, spec_from_hf

from .conftest import TINY_BART, seq2seq_checks, seq2seq_greedy, sinusoid_table_checks, tiny_seq2seq


def pegasus(cls: str, **kw: Any) -> Callable[[], Any]:
    base = {**TINY_BART, "decoder_start_token_id": 1, "scale_embedding": True}
    return tiny_seq2seq("PegasusConfig", cls, {**base, **kw})


CASES = {
    "lm": pegasus("PegasusForConditionalGeneration"),
    "lm-unscaled-wider-decoder-odd": pegasus(
        "PegasusForConditionalGeneration", scale_embedding=False, decoder_ffn_dim=56, d_model=54,
        activation_function="swish"),
    "base-untied": pegasus("PegasusModel", tie_word_embeddings=False),
}  # fmt: skip


test_same_numbers_both_ways = seq2seq_checks(CASES)


def test_greedy_generation() -> None:
    # small init: the perturbation dominates, and decoding does not settle on one token
    model = pegasus("PegasusForConditionalGeneration", tie_word_embeddings=False, init_std=0.02)
    seq2seq_greedy(model())


def test_spec() -> None:
    spec = spec_from_hf(CASES["lm"]())
    assert (spec.position.type, spec.position.layout, spec.max_seq_len) == (
        "sinusoidal", "half", 30)  # fmt: skip
    assert (spec.block.layout, spec.use_final_norm, spec.embedding.norm) == (
        "pre_norm", True, None)  # fmt: skip
    assert (spec.embedding.scale, spec.head.bias, spec.head.tie_embeddings) == (
        "sqrt_d_model", True, True)  # fmt: skip


(test_positions_are_the_fixed_table_not_a_parameter,
 test_a_table_that_is_not_the_sinusoid_is_refused) = sinusoid_table_checks(
    CASES["lm"], "PegasusDecoder's embed_positions table")  # fmt: skip


def test_refused_options() -> None:
    config = transformers.PegasusConfig(decoder_attention_heads=8, decoder_layerdrop=0.1,
                                        activation_function="mish")  # fmt: skip
    with pytest.raises(HFConversionError) as info:
        spec_from_hf(config, hf_class="PegasusForConditionalGeneration")
    assert {p.path for p in info.value.problems} == {
        "decoder_attention_heads", "decoder_layerdrop", "activation_function"}  # fmt: skip
