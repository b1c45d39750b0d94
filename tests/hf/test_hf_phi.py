"""Phi both ways: parallel block with one shared norm, partial RoPE, GQA, qk LayerNorm."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

transformers = pytest.importorskip("transformers")

from txblocks.hf import spec_from_hf

from .conftest import (
    DECODER_IDS, decoder_checks, decoder_greedy, perturbed, positions_matter, scaled,
)  # fmt: skip

QK = ("q_proj", "k_proj")


def phi(cls: str, **kw: Any) -> Callable[[], Any]:
    # head_dim 8; partial_rotary_factor 0.5 rotates 4 dims; GQA 6 / 2
    base = {"num_hidden_layers": 3, "hidden_size": 48, "num_attention_heads": 6,
            "num_key_value_heads": 2, "vocab_size": 97, "max_position_embeddings": 40,
            "intermediate_size": 40, "initializer_range": 0.2,
            "rope_parameters": {"rope_type": "default", "rope_theta": 500.0,
                                "partial_rotary_factor": 0.5},
            **DECODER_IDS}  # fmt: skip
    config = transformers.PhiConfig(**{**base, **kw})
    return lambda: scaled(getattr(transformers, cls)(config), QK)


CASES = {
    "lm-gqa-partial": phi("PhiForCausalLM"),
    "lm-qk-layernorm-tied-mqa-gelu": phi(
        "PhiForCausalLM", qk_layernorm=True, tie_word_embeddings=True, num_key_value_heads=1,
        hidden_act="gelu"),
    "base-mha-dynamic": phi("PhiModel", num_key_value_heads=6, max_position_embeddings=8,
                            rope_parameters={"rope_type": "dynamic", "rope_theta": 500.0,
                                             "factor": 2.0, "partial_rotary_factor": 0.75}),
}  # fmt: skip


test_same_numbers, test_round_trip = decoder_checks(
    CASES, make=perturbed, check_positions=False)  # fmt: skip


def test_greedy_decoding() -> None:
    decoder_greedy(perturbed(phi("PhiForCausalLM", num_hidden_layers=2)))


def test_positions_matter() -> None:
    positions_matter(perturbed(CASES["lm-gqa-partial"]))


def test_spec() -> None:
    spec = spec_from_hf(perturbed(CASES["lm-qk-layernorm-tied-mqa-gelu"]))
    assert (spec.block.layout, spec.kv_heads, spec.position.fraction) == ("parallel", 1, 0.5)
    assert spec.block.shared_norm  # input_layernorm feeds both branches
    assert spec.block.attention.qk_norm.type == "layernorm"
    assert spec.head.bias and spec.head.tie_embeddings
