"""OPT both ways: pre-norm sizes, positions offset by 2 and counted from the attention mask."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

transformers = pytest.importorskip("transformers")

from txblocks.hf import HFConversionError, spec_from_hf

from .conftest import DECODER_IDS, decoder_greedy, decoder_parity, decoder_round_trip, perturbed
from .conftest import scaled

QK = ("q_proj", "k_proj")


def opt(cls: str, **kw: Any) -> Callable[[], Any]:
    base = {"num_hidden_layers": 3, "hidden_size": 48, "num_attention_heads": 6, "ffn_dim": 40,
            "vocab_size": 97, "max_position_embeddings": 40, "init_std": 0.2,
            **DECODER_IDS}  # fmt: skip
    config = transformers.OPTConfig(**{**base, **kw})
    return lambda: scaled(getattr(transformers, cls)(config), QK)


CASES = {
    "lm-tied": opt("OPTForCausalLM"),
    "lm-untied-no-bias-no-affine-gelu": opt(
        "OPTForCausalLM", tie_word_embeddings=False, enable_bias=False,
        layer_norm_elementwise_affine=False, activation_function="gelu"),
    "base-no-final-norm": opt("OPTModel", _remove_final_layer_norm=True),
}  # fmt: skip


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("case", list(CASES))
def test_same_numbers(case: str, side: str) -> None:
    decoder_parity(perturbed(CASES[case]), side, positions_from_mask=True)


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip(case: str) -> None:
    decoder_round_trip(perturbed(CASES[case]))


def test_greedy_decoding() -> None:
    decoder_greedy(perturbed(opt("OPTForCausalLM", num_hidden_layers=2, tie_word_embeddings=False)))


def test_spec() -> None:
    spec = spec_from_hf(perturbed(CASES["base-no-final-norm"]))
    assert (spec.position.offset, spec.max_seq_len, spec.use_final_norm) == (2, 40, False)
    norm = spec_from_hf(perturbed(CASES["lm-untied-no-bias-no-affine-gelu"])).block.norm
    assert (norm.affine, norm.bias) == (False, False)


def test_opt_350m_is_refused_with_every_reason() -> None:
    config = transformers.OPTConfig(word_embed_proj_dim=32, do_layer_norm_before=False,
                                    layerdrop=0.1)  # fmt: skip
    with pytest.raises(HFConversionError) as info:
        spec_from_hf(config, hf_class="OPTForCausalLM")
    found = {p.path: p.message for p in info.value.problems}
    assert set(found) == {"word_embed_proj_dim", "do_layer_norm_before", "layerdrop"}
    assert "project_in" in found["word_embed_proj_dim"]
