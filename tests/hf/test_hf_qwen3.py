"""Qwen3 <-> txblocks: same numbers as Hugging Face, both ways.

Tiny random models (d_model 48, GQA 6/2, head_dim 10), every parameter perturbed (the
per-head q and k norms too) and q, k scaled up (positions matter), fp32, padded batches on
both sides: hidden states and logits within 1e-4 on real positions; ``to_hf(from_hf(m))``
is ``m``; greedy decoding gives HF's tokens. Sliding windows on some layers only, as
``layer_types`` says, and biases on q, k, v and o.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

transformers = pytest.importorskip("transformers")

from txblocks.hf import spec_from_hf

from .conftest import TINY_DECODER, config_problems, decoder_checks, decoder_greedy, tiny_decoder


def qwen3(cls: str = "Qwen3ForCausalLM", **kw: Any) -> Callable[[], Any]:
    base = {**TINY_DECODER, "num_hidden_layers": 3, "head_dim": 10, "rms_norm_eps": 1e-5}
    return tiny_decoder("Qwen3Config", cls, {**base, **kw})


CASES = {
    "lm-mixed-windows-bias": qwen3(use_sliding_window=True, sliding_window=4,
                                   max_window_layers=1, attention_bias=True),
    "lm-tied-dynamic-rope": qwen3(
        tie_word_embeddings=True, max_position_embeddings=8,
        rope_parameters={"rope_type": "dynamic", "rope_theta": 500.0, "factor": 3.0}),
    "base-mha": qwen3("Qwen3Model", num_key_value_heads=6, num_hidden_layers=2),
}  # fmt: skip


test_same_numbers, test_round_trip = decoder_checks(CASES)


def test_greedy_decoding_same_tokens() -> None:
    decoder_greedy(qwen3(num_hidden_layers=2, use_sliding_window=True, sliding_window=5,
                         max_window_layers=1)())  # fmt: skip


def test_spec() -> None:
    spec = spec_from_hf(CASES["lm-mixed-windows-bias"]())
    attention = spec.block.attention
    assert (attention.qk_norm.type, attention.qk_norm.eps) == ("rmsnorm", 1e-5)
    assert (attention.qkv_bias, attention.out_bias, spec.head_size) == (True, True, 10)
    windows = [getattr(spec.block_for(i).attention.mask, "window", None) for i in range(3)]
    assert windows == [None, 4, 4]


def test_unsupported_options_are_listed_together() -> None:
    config = transformers.Qwen3Config(
        hidden_size=48, num_attention_heads=6, num_hidden_layers=2, hidden_act="relu2",
        layer_types=["full_attention", "chunked_attention"],
        rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0},
    )  # fmt: skip
    found = config_problems(config)
    assert set(found) == {"hidden_act", "rope_parameters", "layer_types"}
