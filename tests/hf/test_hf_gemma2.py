"""Gemma 2 <-> txblocks: same numbers as Hugging Face, both ways.

Tiny random models (d_model 48, GQA 6/2, head_dim 10, 3 layers), every parameter perturbed
(the four norms of each block far from 0, so ``1 + w`` is tested) and q, k scaled up
(positions matter), fp32, padded batches on both sides: hidden states and logits within 1e-4
on real positions; ``to_hf(from_hf(m))`` is ``m``; greedy decoding gives HF's tokens. Sliding
windows of 5 on every other layer (HF's default layer types) and on all layers, score
soft-capping small enough to bite (2.0; 50 in Gemma 2), a logit soft-cap of 3 (30 in Gemma 2),
``query_pre_attn_scalar`` 16 ≠ head_dim; both caps are checked to change the numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

import txblocks
from txblocks.hf import HFConversionError, from_hf, spec_from_hf, to_hf

from .conftest import (
    TINY_DECODER, config_problems, decoder_checks, decoder_greedy, padded_batch, tiny_decoder,
)  # fmt: skip

VOCAB = 97


def gemma2(cls: str = "Gemma2ForCausalLM", **kw: Any) -> Callable[[], Any]:
    base = {**TINY_DECODER, "num_hidden_layers": 3, "head_dim": 10, "sliding_window": 5,
            "query_pre_attn_scalar": 16, "attn_logit_softcapping": 2.0,
            "final_logit_softcapping": 3.0}  # fmt: skip
    return tiny_decoder("Gemma2Config", cls, {**base, **kw})


CASES = {
    "lm-tied-alternating-windows": gemma2(),
    "lm-untied-bias-linear-no-caps": gemma2(
        tie_word_embeddings=False, attention_bias=True, attn_logit_softcapping=None,
        final_logit_softcapping=None, query_pre_attn_scalar=10,
        rope_parameters={"rope_type": "linear", "rope_theta": 500.0, "factor": 2.0}),
    "base-mha-all-sliding-silu": gemma2(
        "Gemma2Model", num_key_value_heads=6, hidden_activation="silu",
        layer_types=["sliding_attention"] * 3),
}  # fmt: skip


test_same_numbers, test_round_trip = decoder_checks(CASES)


def test_greedy_decoding_same_tokens() -> None:
    decoder_greedy(gemma2(tie_word_embeddings=False, final_logit_softcapping=30.0)())


def test_spec() -> None:
    spec = spec_from_hf(CASES["lm-tied-alternating-windows"]())
    block = spec.block
    assert (block.layout, block.post_attention_norm, block.post_ffn_norm) == ("pre_norm", True, True)
    assert (block.norm.type, block.norm.unit_offset, spec.embedding.scale) == (
        "rmsnorm", True, "sqrt_d_model")  # fmt: skip
    assert (block.attention.softcap, block.attention.scale) == (2.0, 0.25)
    assert (spec.head.final_softcap, spec.head.tie_embeddings) == (3.0, True)
    windows = [getattr(spec.block_for(i).attention.mask, "window", None) for i in range(3)]
    assert windows == [5, None, 5]
    assert spec_from_hf(CASES["lm-untied-bias-linear-no-caps"]()).block.attention.scale is None


def test_caps_change_the_numbers() -> None:
    """Both caps act on these models: without them the logits move (so parity tests them)."""
    model = from_hf(CASES["lm-tied-alternating-windows"]())
    x = padded_batch("right", VOCAB)
    with torch.no_grad():
        capped = model(x["input_ids"], x["attention_mask"]).logits
        for block in model.blocks:
            block.attention.softcap = None
        scores = model(x["input_ids"], x["attention_mask"]).logits
        model.head.final_softcap = None
        plain = model(x["input_ids"], x["attention_mask"]).logits
    assert (capped - scores).abs().max() > 1e-2 and (scores - plain).abs().max() > 1e-1


def test_norm_weights_are_copied_as_stored() -> None:
    hf = CASES["lm-tied-alternating-windows"]()
    model = from_hf(hf)
    layer, block = hf.model.layers[2], model.blocks[2]
    for hf_norm, tx_norm in ((layer.input_layernorm, block.norm1),
                             (layer.post_attention_layernorm, block.post_attention_norm),
                             (layer.pre_feedforward_layernorm, block.norm2),
                             (layer.post_feedforward_layernorm, block.post_ffn_norm)):
        assert torch.equal(tx_norm.weight, hf_norm.weight)


def test_a_model_without_sandwich_norms_is_not_gemma2() -> None:
    model = from_hf(CASES["lm-tied-alternating-windows"]())
    data = model.spec.model_dump(mode="json")
    data["block"]["post_ffn_norm"] = False
    with pytest.raises(HFConversionError, match=r"gemma2: block\.post_ffn_norm"):
        to_hf(txblocks.build(data), family="gemma2")


def test_unsupported_options_are_listed_together() -> None:
    config = transformers.Gemma2Config(
        hidden_size=48, num_attention_heads=6, head_dim=8, hidden_activation="relu2",
        use_bidirectional_attention=True, num_hidden_layers=2,
        layer_types=["sliding_attention", "chunked_attention"],
    )  # fmt: skip
    found = config_problems(config)
    assert set(found) == {"hidden_activation", "layer_types", "use_bidirectional_attention"}
