"""GPT-J both ways: parallel block with one shared norm, interleaved partial RoPE, biased head."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

transformers = pytest.importorskip("transformers")

import txblocks
from txblocks.hf import HFConversionError, from_hf, spec_from_hf, to_hf

from .conftest import DECODER_IDS, decoder_checks, decoder_greedy, perturbed, scaled

QK = ("q_proj", "k_proj")


def gptj(cls: str, **kw: Any) -> Callable[[], Any]:
    # head_dim 8: rotary_dim 6 rotates three pairs, two dims pass
    base = {"n_layer": 3, "n_embd": 48, "n_head": 6, "rotary_dim": 6, "vocab_size": 97,
            "n_positions": 40, "n_inner": 40, "initializer_range": 0.2,
            **DECODER_IDS}  # fmt: skip
    config = transformers.GPTJConfig(**{**base, **kw})
    return lambda: scaled(getattr(transformers, cls)(config), QK)


CASES = {
    "lm-rotary6": gptj("GPTJForCausalLM"),
    "lm-tied-full-rotary-relu": gptj("GPTJForCausalLM", rotary_dim=8, tie_word_embeddings=True,
                                     activation_function="relu"),
    "base-rotary2": gptj("GPTJModel", rotary_dim=2, n_inner=None),
}  # fmt: skip


test_same_numbers, test_round_trip = decoder_checks(
    CASES, make=perturbed, check_positions=False)  # fmt: skip


def test_greedy_decoding() -> None:
    decoder_greedy(perturbed(gptj("GPTJForCausalLM", n_layer=2)))


def test_spec() -> None:
    spec = spec_from_hf(perturbed(CASES["lm-rotary6"]))
    assert (spec.block.layout, spec.block.shared_norm) == ("parallel", True)
    assert (spec.position.interleaved, int(8 * spec.position.fraction)) == (True, 6)
    assert spec.head.bias and not spec.head.tie_embeddings


def test_one_shared_norm_and_two_norms() -> None:
    """``ln_1`` is the block's one norm (``shared_norm``); a parallel block with two norms
    has no GPT-J config and is refused, naming the field."""
    model = from_hf(perturbed(CASES["lm-rotary6"]))
    assert model.spec.block.shared_norm and model.blocks[1].norm2 is None
    data = model.spec.model_dump(mode="json")
    data["block"]["shared_norm"] = False
    with pytest.raises(HFConversionError, match=r"gptj: block\.shared_norm"):
        to_hf(txblocks.build(data), family="gptj")


def test_rotary_dim_beyond_the_head() -> None:
    with pytest.raises(HFConversionError, match="rotary_dim: 12: must be even"):
        spec_from_hf(transformers.GPTJConfig(n_embd=48, n_head=6, rotary_dim=12))
