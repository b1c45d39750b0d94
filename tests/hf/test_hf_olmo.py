"""OLMo <-> txblocks: same numbers as Hugging Face, both ways.

Tiny random models (d_model 48, GQA 6/2), every parameter perturbed and q, k scaled up
(positions matter), fp32, padded batches on both sides: hidden states and logits within
1e-4 on real positions; ``to_hf(from_hf(m))`` is ``m``; greedy decoding gives HF's tokens.
The norms are ``layernorm {affine: false}``: no parameters on either side.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

import txblocks
from txblocks.hf import HFConversionError, from_hf, to_hf

from .conftest import TINY_DECODER, config_problems, decoder_checks, decoder_greedy, tiny_decoder


def olmo(cls: str = "OlmoForCausalLM", **kw: Any) -> Callable[[], Any]:
    return tiny_decoder("OlmoConfig", cls, {**TINY_DECODER, **kw})


CASES = {
    "lm-bias": olmo(attention_bias=True),
    "lm-tied-llama3-rope": olmo(tie_word_embeddings=True, rope_parameters={
        "rope_type": "llama3", "rope_theta": 500.0, "factor": 4.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8}),
    "base-mha-head-dim-10": olmo("OlmoModel", num_key_value_heads=6, head_dim=10),
}  # fmt: skip


test_same_numbers, test_round_trip = decoder_checks(CASES)


def test_greedy_decoding_same_tokens() -> None:
    decoder_greedy(olmo()())


def test_norms_have_no_parameters() -> None:
    model = from_hf(CASES["lm-bias"]())
    norm = model.spec.block.norm
    assert (norm.type, norm.eps, norm.affine, norm.bias) == ("layernorm", 1e-5, False, False)
    assert not any("norm" in name for name, _ in model.named_parameters())


def test_a_model_with_norm_weights_is_not_olmo() -> None:
    """Learned norm weights have no place in OLMo: to_hf refuses rather than drop them."""
    data = from_hf(CASES["lm-bias"]()).spec.model_dump(mode="json")
    data["block"]["norm"].update(affine=True, bias=True)
    torch.manual_seed(0)
    with pytest.raises(HFConversionError, match=r"olmo: block\.norm\.affine"):
        to_hf(txblocks.build(data), family="olmo")


def test_unsupported_options_are_listed_together() -> None:
    config = transformers.OlmoConfig(hidden_size=48, num_attention_heads=6, clip_qkv=8.0,
                                     hidden_act="relu2")  # fmt: skip
    found = config_problems(config)
    assert set(found) == {"clip_qkv", "hidden_act"}
