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
import torch

transformers = pytest.importorskip("transformers")

from txblocks.hf import HFConversionError, from_hf, spec_from_hf

from .conftest import (
    both_ways, perturbed_all, scaled, seq2seq_batch, seq2seq_greedy, seq2seq_parity,
)  # fmt: skip

QK = (".q_proj.", ".k_proj.")


def pegasus(cls: str, **kw: Any) -> Callable[[], Any]:
    base = {"d_model": 48, "encoder_attention_heads": 6, "decoder_attention_heads": 6,
            "encoder_layers": 2, "decoder_layers": 3, "encoder_ffn_dim": 40,
            "decoder_ffn_dim": 40, "vocab_size": 97, "max_position_embeddings": 30,
            "init_std": 0.1, "pad_token_id": 1, "eos_token_id": 2,
            "decoder_start_token_id": 1, "forced_eos_token_id": None,
            "scale_embedding": True}  # fmt: skip
    config = transformers.PegasusConfig(**{**base, **kw})
    return lambda: scaled(perturbed_all(lambda: getattr(transformers, cls)(config)), QK)


CASES = {
    "lm": pegasus("PegasusForConditionalGeneration"),
    "lm-unscaled-wider-decoder-odd": pegasus(
        "PegasusForConditionalGeneration", scale_embedding=False, decoder_ffn_dim=56, d_model=54,
        activation_function="swish"),
    "base-untied": pegasus("PegasusModel", tie_word_embeddings=False),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_same_numbers_both_ways(case: str) -> None:
    hf = CASES[case]()
    seq2seq_parity(hf)
    unread = ("shared.weight",) if not hf.config.tie_word_embeddings else ()
    both_ways(hf, seq2seq_batch(), unread=unread)


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


def test_positions_are_the_fixed_table_not_a_parameter() -> None:
    hf = CASES["lm"]()
    model = from_hf(hf)
    assert not any("position" in name for name, _ in model.named_parameters())
    table = hf.model.encoder.embed_positions.weight
    torch.testing.assert_close(model.encoder.position.table, table, atol=1e-7, rtol=0)


def test_a_table_that_is_not_the_sinusoid_is_refused() -> None:
    hf = CASES["lm"]()
    with torch.no_grad():
        hf.model.decoder.embed_positions.weight[3, 5] += 0.01
    with pytest.raises(HFConversionError, match="PegasusDecoder's embed_positions table"):
        from_hf(hf)


def test_refused_options() -> None:
    config = transformers.PegasusConfig(decoder_attention_heads=8, decoder_layerdrop=0.1,
                                        activation_function="mish")  # fmt: skip
    with pytest.raises(HFConversionError) as info:
        spec_from_hf(config, hf_class="PegasusForConditionalGeneration")
    assert {p.path for p in info.value.problems} == {
        "decoder_attention_heads", "decoder_layerdrop", "activation_function"}  # fmt: skip
