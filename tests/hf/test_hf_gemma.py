"""Gemma <-> txblocks: same numbers as Hugging Face, both ways.

Tiny random models (d_model 48, GQA 6/2, head_dim 10 as Gemma's head_dim is its own),
every parameter perturbed (norm weights far from 0, so ``1 + w`` is tested) and q, k
scaled up (positions matter), fp32, padded batches on both sides: hidden states and logits
within 1e-4 on real positions; ``to_hf(from_hf(m))`` is ``m``; greedy decoding gives HF's
tokens. The norm weights are copied as HF stores them: ``rmsnorm {unit_offset: true}``
adds the 1, not the conversion.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

import txblocks
from txblocks.hf import HFConversionError, from_hf, spec_from_hf, to_hf

from .conftest import TINY_DECODER, config_problems, decoder_checks, decoder_greedy, tiny_decoder


def gemma(cls: str = "GemmaForCausalLM", **kw: Any) -> Callable[[], Any]:
    return tiny_decoder("GemmaConfig", cls, {**TINY_DECODER, "head_dim": 10, **kw})


CASES = {
    "lm-tied": gemma(),
    "lm-untied-bias-linear-rope": gemma(
        tie_word_embeddings=False, attention_bias=True,
        rope_parameters={"rope_type": "linear", "rope_theta": 500.0, "factor": 2.0}),
    "base-mha-silu": gemma("GemmaModel", num_key_value_heads=6, hidden_act="silu"),
}  # fmt: skip


test_same_numbers, test_round_trip = decoder_checks(CASES)


def test_greedy_decoding_same_tokens() -> None:
    decoder_greedy(gemma(tie_word_embeddings=False)())


def test_spec_and_norm_weights_as_stored() -> None:
    hf = CASES["lm-tied"]()
    spec = spec_from_hf(hf)
    assert (spec.block.norm.type, spec.block.norm.unit_offset) == ("rmsnorm", True)
    assert (spec.embedding.scale, spec.head_size, spec.head.tie_embeddings) == (
        "sqrt_d_model", 10, True)  # fmt: skip
    assert spec.block.ffn.activation.type == "gelu_tanh"  # gelu_pytorch_tanh
    model = from_hf(hf)
    layer = hf.model.layers[1]
    assert torch.equal(model.blocks[1].norm2.weight, layer.post_attention_layernorm.weight)
    assert torch.equal(model.final_norm.weight, hf.model.norm.weight)


def test_a_plain_rmsnorm_model_is_not_gemma() -> None:
    """A Llama-style norm (scale w, not 1 + w) has no Gemma config: to_hf says so."""
    model = from_hf(CASES["lm-tied"]())
    data = model.spec.model_dump(mode="json")
    data["block"]["norm"]["unit_offset"] = False
    plain = txblocks.build(data)
    with pytest.raises(HFConversionError, match=r"gemma: block\.norm\.unit_offset"):
        to_hf(plain, family="gemma")


def test_unsupported_options_are_listed_together() -> None:
    config = transformers.GemmaConfig(
        hidden_size=48, num_attention_heads=6, head_dim=8, hidden_act="relu2",
        use_bidirectional_attention=True,
        rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0},
    )  # fmt: skip
    found = config_problems(config)
    assert set(found) == {"hidden_act", "rope_parameters", "use_bidirectional_attention"}
