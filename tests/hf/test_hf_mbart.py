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

from .conftest import (
    both_ways, perturbed_all, scaled, seq2seq_batch, seq2seq_greedy, seq2seq_parity,
)  # fmt: skip

QK = (".q_proj.", ".k_proj.")


def mbart(cls: str, **kw: Any) -> Callable[[], Any]:
    base = {"d_model": 48, "encoder_attention_heads": 6, "decoder_attention_heads": 6,
            "encoder_layers": 2, "decoder_layers": 3, "encoder_ffn_dim": 40,
            "decoder_ffn_dim": 40, "vocab_size": 97, "max_position_embeddings": 30,
            "init_std": 0.1, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
            "decoder_start_token_id": 2, "forced_eos_token_id": None}  # fmt: skip
    config = transformers.MBartConfig(**{**base, **kw})
    return lambda: scaled(perturbed_all(lambda: getattr(transformers, cls)(config)), QK)


CASES = {
    "lm-scaled-wider-decoder": mbart("MBartForConditionalGeneration", scale_embedding=True,
                                     decoder_ffn_dim=56, activation_function="gelu_new"),
    "lm": mbart("MBartForConditionalGeneration"),
    "base-untied-relu": mbart("MBartModel", tie_word_embeddings=False, activation_function="relu"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_same_numbers_both_ways(case: str) -> None:
    hf = CASES[case]()
    seq2seq_parity(hf)
    unread = ("shared.weight",) if not hf.config.tie_word_embeddings else ()
    both_ways(hf, seq2seq_batch(), unread=unread)


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
