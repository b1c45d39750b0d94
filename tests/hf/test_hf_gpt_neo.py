"""GPT-Neo both ways: alternating global / local (sliding-window) layers, unscaled scores."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

transformers = pytest.importorskip("transformers")

from txblocks.hf import spec_from_hf

from .conftest import (
    DECODER_IDS, config_problems, decoder_checks, decoder_greedy, perturbed, scaled,
)  # fmt: skip

QK = ("q_proj", "k_proj")


def gpt_neo(cls: str, **kw: Any) -> Callable[[], Any]:
    base = {"num_layers": 3, "hidden_size": 48, "num_heads": 6, "vocab_size": 97,
            "max_position_embeddings": 40, "attention_types": [[["global", "local", "global"], 1]],
            "window_size": 4, "intermediate_size": 40, "initializer_range": 0.2,
            **DECODER_IDS}  # fmt: skip
    config = transformers.GPTNeoConfig(**{**base, **kw})
    return lambda: scaled(getattr(transformers, cls)(config), QK)


CASES = {
    "lm-mixed-windows": gpt_neo("GPTNeoForCausalLM"),
    "lm-all-local-untied-relu": gpt_neo(
        "GPTNeoForCausalLM", attention_types=[[["local"], 3]], tie_word_embeddings=False,
        activation_function="relu"),
    "base-all-global": gpt_neo("GPTNeoModel", attention_types=[[["global"], 3]],
                               intermediate_size=None),
}  # fmt: skip


test_same_numbers, test_round_trip = decoder_checks(
    CASES, make=perturbed, check_positions=False)  # fmt: skip


def test_greedy_decoding() -> None:
    decoder_greedy(perturbed(gpt_neo("GPTNeoForCausalLM", tie_word_embeddings=False)))


def test_local_layers_become_overrides() -> None:
    spec = spec_from_hf(perturbed(CASES["lm-mixed-windows"]))
    windows = [getattr(spec.block_for(i).attention.mask, "window", None) for i in range(3)]
    assert windows == [None, 4, None]
    assert spec.block.attention.scale == 1.0


def test_unknown_attention_type_and_activation() -> None:
    config = transformers.GPTNeoConfig(
        num_layers=2, attention_types=[[["global", "local"], 1]], activation_function="mish")
    config.attention_layers = ["global", "dilated"]
    found = config_problems(config)
    assert set(found) == {"attention_types", "activation_function"}
    assert "'dilated'" in found["attention_types"]
