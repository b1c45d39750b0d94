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

from txblocks.hf import spec_from_hf

from .conftest import TINY_DECODER, config_problems, decoder_checks, decoder_greedy, tiny_decoder

VOCAB = 97


def starcoder2(cls: str = "Starcoder2ForCausalLM", **kw: Any) -> Callable[[], Any]:
    return tiny_decoder("Starcoder2Config", cls, {**TINY_DECODER, **kw})


CASES = {
    "lm-tied-window5": starcoder2(sliding_window=5),
    "lm-untied-no-bias-head-dim-10": starcoder2(tie_word_embeddings=False, use_bias=False,
                                                head_dim=10),
    "base-mha-relu": starcoder2("Starcoder2Model", num_key_value_heads=6, hidden_act="relu"),
}  # fmt: skip


test_same_numbers, test_round_trip = decoder_checks(CASES)


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
    found = config_problems(config)
    assert set(found) == {"hidden_act", "rope_parameters"}
    assert "partial_rotary_factor" in found["rope_parameters"]
