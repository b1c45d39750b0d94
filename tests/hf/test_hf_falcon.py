"""Falcon both ways: the 7B layout (parallel, one shared norm, multi-query), the new decoder
architecture (GQA, two norms or one), and the sequential layout; qkv grouped per kv head."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

import txblocks
from txblocks.hf import HFConversionError, from_hf, spec_from_hf, to_hf

from .conftest import (
    DECODER_IDS, config_problems, decoder_greedy, decoder_parity, decoder_round_trip, perturbed,
)  # fmt: skip
from .conftest import padded_batch, positions_matter, scaled

QKV = ("query_key_value",)
NEW = {"new_decoder_architecture": True, "num_kv_heads": 2}


def falcon(cls: str, **kw: Any) -> Callable[[], Any]:
    base = {"num_hidden_layers": 3, "hidden_size": 48, "num_attention_heads": 6,
            "vocab_size": 97, "max_position_embeddings": 40, "ffn_hidden_size": 40,
            "initializer_range": 0.2, "rope_parameters": {"rope_type": "default",
                                                          "rope_theta": 500.0},
            **DECODER_IDS}  # fmt: skip
    config = transformers.FalconConfig(**{**base, **kw})
    return lambda: scaled(getattr(transformers, cls)(config), QKV)


LINEAR = {"rope_type": "linear", "rope_theta": 1000.0, "factor": 2.0}
CASES = {
    "7b-lm": falcon("FalconForCausalLM"),
    "new-arch-lm-gqa-bias-untied-linear": falcon(
        "FalconForCausalLM", **NEW, bias=True, tie_word_embeddings=False, rope_parameters=LINEAR),
    "sequential-base-mha-relu": falcon("FalconModel", parallel_attn=False, multi_query=False,
                                       activation="relu", bias=True),
}  # fmt: skip
CASES["new-arch-one-norm"] = falcon("FalconForCausalLM", **NEW, num_ln_in_parallel_attn=1)
# the old layout without multi-query: parallel, one norm, as many kv heads as heads; to_hf
# gives the new architecture with one norm (same names, weights and numbers)
OLD_MHA = falcon("FalconModel", multi_query=False, num_kv_heads=6)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("case", [*CASES, "old-mha"])
def test_same_numbers(case: str, side: str) -> None:
    decoder_parity(perturbed(CASES.get(case, OLD_MHA)), side)


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip(case: str) -> None:
    decoder_round_trip(perturbed(CASES[case]))


def test_one_norm_comes_back_as_one_norm() -> None:
    """Falcon2-11B's layout (new architecture, ``num_ln_in_parallel_attn: 1``) is the parallel
    layout with ``shared_norm``, and comes back with its one ``input_layernorm``."""
    hf = perturbed(CASES["new-arch-one-norm"])
    model = from_hf(hf)
    assert model.spec.block.shared_norm and model.blocks[0].norm2 is None
    back = to_hf(model)
    assert (back.config.new_decoder_architecture, back.config.num_ln_in_parallel_attn) == (True, 1)
    old = to_hf(from_hf(perturbed(OLD_MHA)))
    assert old.config.num_ln_in_parallel_attn == 1 and old.config.num_kv_heads == 6
    inputs = padded_batch("right")
    with torch.no_grad():
        torch.testing.assert_close(old(**inputs).last_hidden_state,
                                   perturbed(OLD_MHA)(**inputs).last_hidden_state,
                                   rtol=0, atol=1e-5)  # fmt: skip


@pytest.mark.parametrize("case", ["7b", "new-arch"])
def test_greedy_decoding(case: str) -> None:
    kw = NEW if case == "new-arch" else {}
    decoder_greedy(perturbed(falcon("FalconForCausalLM", num_hidden_layers=2,
                                    tie_word_embeddings=False, **kw)))  # fmt: skip


def test_positions_matter() -> None:
    positions_matter(perturbed(CASES["7b-lm"]))


def test_layouts() -> None:
    spec = spec_from_hf(perturbed(CASES["7b-lm"]))
    assert (spec.block.layout, spec.block.shared_norm, spec.kv_heads) == ("parallel", True, 1)
    spec = spec_from_hf(perturbed(CASES["new-arch-lm-gqa-bias-untied-linear"]))
    assert (spec.block.layout, spec.kv_heads, spec.position.scaling.type) == (
        "parallel", 2, "linear")
    spec = spec_from_hf(perturbed(CASES["sequential-base-mha-relu"]))
    assert (spec.block.layout, spec.kv_heads) == ("pre_norm", 6)


def test_two_norms_and_one_kv_head_go_to_the_new_architecture() -> None:
    """The 7B layout has one shared norm; a multi-query parallel block with two norms is the
    new architecture with ``num_kv_heads: 1`` and ``ln_attn`` / ``ln_mlp``."""
    model = from_hf(perturbed(CASES["7b-lm"]))
    data = model.spec.model_dump(mode="json")
    data["block"]["shared_norm"] = False
    two = txblocks.build(data).eval()
    back = to_hf(two)
    config = back.config
    assert (config.new_decoder_architecture, config.num_kv_heads,
            config.num_ln_in_parallel_attn) == (True, 1, 2)  # fmt: skip
    inputs = padded_batch("right")
    with torch.no_grad():
        expected = two(inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        got = back(**inputs).logits
    keep = inputs["attention_mask"].bool()
    assert (expected[keep] - got[keep]).abs().max() <= 1e-4


def test_unsupported_layouts_are_listed() -> None:
    config = transformers.FalconConfig(
        hidden_size=48, num_attention_heads=6, alibi=True, parallel_attn=False,
        multi_query=False, num_kv_heads=2, attention_dropout=0.1, activation="mish")
    found = config_problems(config)
    assert set(found) == {"alibi", "num_kv_heads", "attention_dropout", "activation"}
    config = transformers.FalconConfig(new_decoder_architecture=True, parallel_attn=False)
    with pytest.raises(HFConversionError, match="parallel_attn: False: False with new_decoder"):
        spec_from_hf(config)
