"""MBart: BART with pre-norm blocks and a norm after each stack, same numbers as Hugging Face.

Tiny random models (d_model 48, 6 heads, 2 encoder and 3 decoder layers), every parameter
and ``final_logits_bias`` perturbed, query and key weights scaled up, right-padded sources
and targets, fp32, eval mode: encoder output, decoder hidden states and logits within 1e-4
on real positions, greedy generation token for token, ``to_hf(from_hf(m))`` equal to ``m``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

transformers = pytest.importorskip("transformers")

from txblocks.hf import HFConversionError, spec_from_hf

from .conftest import TINY_BART, seq2seq_checks, seq2seq_greedy, tiny_seq2seq


def mbart(cls: str, **kw: Any) -> Callable[[], Any]:
    base = {**TINY_BART, "bos_token_id": 0, "decoder_start_token_id": 2}
    return tiny_seq2seq("MBartConfig", cls, {**base, **kw})


CASES = {
    "lm-scaled-wider-decoder": mbart("MBartForConditionalGeneration", scale_embedding=True,
                                     decoder_ffn_dim=56, activation_function="gelu_new"),
    "lm": mbart("MBartForConditionalGeneration"),
    "base-untied-relu": mbart("MBartModel", tie_word_embeddings=False, activation_function="relu"),
}  # fmt: skip


test_same_numbers_both_ways = seq2seq_checks(CASES)


def test_greedy_generation() -> None:
    seq2seq_greedy(mbart("MBartForConditionalGeneration", tie_word_embeddings=False)())


def test_spec() -> None:
    spec = spec_from_hf(CASES["lm-scaled-wider-decoder"]())
    assert (spec.block.layout, spec.use_final_norm, spec.embedding.norm.type) == (
        "pre_norm", True, "layernorm")  # fmt: skip
    assert (spec.position.type, spec.position.offset, spec.embedding.scale) == (
        "learned", 2, "sqrt_d_model")  # fmt: skip
    assert [spec.block_for(0, s).ffn.hidden for s in ("encoder", "decoder")] == [40, 56]
    assert (spec.head.bias, spec.head.tie_embeddings) == (True, True)


def test_refused_options() -> None:
    config = transformers.MBartConfig(decoder_attention_heads=8, encoder_layerdrop=0.1)
    with pytest.raises(HFConversionError) as info:
        spec_from_hf(config, hf_class="MBartForConditionalGeneration")
    assert {p.path for p in info.value.problems} == {"decoder_attention_heads", "encoder_layerdrop"}
