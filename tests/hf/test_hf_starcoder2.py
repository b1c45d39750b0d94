"""Starcoder2 <-> txblocks: same numbers as Hugging Face, both ways.

Tiny random models (d_model 48, GQA 6/2), every parameter perturbed (biases and LayerNorms
too) and q, k scaled up (positions matter), fp32, padded batches on both sides: hidden
states and logits within 1e-4 on real positions; ``to_hf(from_hf(m))`` is ``m``; greedy
decoding gives HF's tokens. Sliding windows shorter than the sequence, with and without
biases, tied and untied heads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

transformers = pytest.importorskip("transformers")

from txblocks.hf import HFConversionError, spec_from_hf

from .conftest import (
    DECODER_IDS, decoder_greedy, decoder_parity, decoder_round_trip, perturbed, positions_matter,
    scaled,
)  # fmt: skip

VOCAB = 97


def starcoder2(cls: str = "Starcoder2ForCausalLM", **kw: Any) -> Callable[[], Any]:
    base = {"num_hidden_layers": 2, "hidden_size": 48, "num_attention_heads": 6,
            "num_key_value_heads": 2, "vocab_size": VOCAB, "intermediate_size": 40,
            "max_position_embeddings": 64, "initializer_range": 0.1,
            "rope_parameters": {"rope_type": "default", "rope_theta": 500.0},
            **DECODER_IDS}  # fmt: skip
    config = transformers.Starcoder2Config(**{**base, **kw})
    return lambda: scaled(perturbed(lambda: getattr(transformers, cls)(config)),
                          ("q_proj", "k_proj"))  # fmt: skip


CASES = {
    "lm-tied-window5": starcoder2(sliding_window=5),
    "lm-untied-no-bias-head-dim-10": starcoder2(tie_word_embeddings=False, use_bias=False,
                                                head_dim=10),
    "base-mha-relu": starcoder2("Starcoder2Model", num_key_value_heads=6, hidden_act="relu"),
}  # fmt: skip


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("case", list(CASES))
def test_same_numbers(case: str, side: str) -> None:
    hf = CASES[case]()
    positions_matter(hf)
    decoder_parity(hf, side)


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip(case: str) -> None:
    decoder_round_trip(CASES[case]())


def test_greedy_decoding_same_tokens() -> None:
    decoder_greedy(starcoder2(sliding_window=6, tie_word_embeddings=False)())


def test_spec() -> None:
    spec = spec_from_hf(starcoder2(sliding_window=5, residual_dropout=0.1,
                                   embedding_dropout=0.2)())  # fmt: skip
    ffn, attention = spec.block.ffn, spec.block.attention
    assert (ffn.type, ffn.hidden, ffn.bias, ffn.activation.type) == ("mlp", 40, True, "gelu_tanh")
    assert (attention.qkv_bias, attention.out_bias, attention.mask.window) == (True, True, 5)
    assert (spec.block.dropout, spec.embedding.dropout) == (0.1, 0.2)
    assert spec.block.norm.type == "layernorm"


def test_unsupported_options_are_listed_together() -> None:
    config = transformers.Starcoder2Config(
        hidden_size=48, num_attention_heads=6, hidden_act="relu2", vocab_size=VOCAB,
        rope_parameters={"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5},
    )  # fmt: skip
    with pytest.raises(HFConversionError) as info:
        spec_from_hf(config)
    found = {p.path: p.message for p in info.value.problems}
    assert set(found) == {"hidden_act", "rope_parameters"}
    assert "partial_rotary_factor" in found["rope_parameters"]
