"""Phi-3 <-> txblocks: same numbers as Hugging Face, both ways.

Tiny random models (d_model 48, GQA 6/2), every parameter perturbed and the fused qkv
scaled up (positions matter), fp32, padded batches on both sides: hidden states and logits
within 1e-4 on real positions; ``to_hf(from_hf(m))`` is ``m``; greedy decoding gives HF's
tokens. Partial rotary factors and a sliding window shorter than the sequence included.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

transformers = pytest.importorskip("transformers")

from txblocks.hf import spec_from_hf

from .conftest import TINY_DECODER, config_problems, decoder_checks, decoder_greedy, tiny_decoder


def phi3(cls: str = "Phi3ForCausalLM", **kw: Any) -> Callable[[], Any]:
    base = {k: v for k, v in TINY_DECODER.items() if k != "rope_parameters"}
    return tiny_decoder("Phi3Config", cls, {**base, **kw}, qk=("qkv_proj",))


def rope(**kw: Any) -> dict[str, Any]:
    return {"rope_type": "default", "rope_theta": 500.0, **kw}


CASES = {
    "lm-partial-half-window5": phi3(
        rope_parameters=rope(partial_rotary_factor=0.5), sliding_window=5),
    "lm-tied-head-dim-10": phi3(tie_word_embeddings=True, head_dim=10),
    "base-mha-gelu-tanh": phi3("Phi3Model", num_key_value_heads=6, hidden_act="gelu_pytorch_tanh"),
}  # fmt: skip


test_same_numbers, test_round_trip = decoder_checks(CASES)


def test_greedy_decoding_same_tokens() -> None:
    decoder_greedy(phi3(sliding_window=6, rope_parameters=rope(partial_rotary_factor=0.5))())


def test_spec() -> None:
    spec = spec_from_hf(CASES["lm-partial-half-window5"]())
    assert (spec.position.type, spec.position.fraction, spec.position.theta) == ("rope", 0.5, 500.0)
    assert spec.block.attention.mask.window == 5
    ffn = spec.block.ffn
    assert (ffn.type, ffn.hidden, spec.block.norm.type) == ("glu", 40, "rmsnorm")


def test_unsupported_options_are_listed_together() -> None:
    config = transformers.Phi3Config(
        hidden_size=48, num_attention_heads=6, hidden_act="relu2",
        rope_parameters={"rope_type": "longrope", "rope_theta": 1e4, "short_factor": [1.0] * 4,
                         "long_factor": [2.0] * 4, "original_max_position_embeddings": 16},
    )  # fmt: skip
    found = config_problems(config)
    assert set(found) == {"hidden_act", "rope_parameters"}
    assert "longrope" in found["rope_parameters"]
