"""OLMo 2 <-> txblocks: same numbers as Hugging Face, both ways.

Tiny random models (d_model 48, GQA 6/2 and MHA), every parameter perturbed (the block's
output norms and the q/k norms far from 1) and q, k scaled up (positions matter), fp32,
padded batches on both sides: hidden states and logits within 1e-4 on real positions;
``to_hf(from_hf(m))`` is ``m``; greedy decoding gives HF's tokens. The q and k norms act over
the full projection widths (48 and 16 with GQA 6/2), which is checked to differ from a norm
per head.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

import txblocks
from txblocks.hf import HFConversionError, from_hf, spec_from_hf, to_hf
from txblocks.nn.norms import RMSNorm

from .conftest import TINY_DECODER, decoder_checks, decoder_greedy, padded_batch, tiny_decoder

VOCAB = 97


def olmo2(cls: str = "Olmo2ForCausalLM", **kw: Any) -> Callable[[], Any]:
    return tiny_decoder("Olmo2Config", cls, {**TINY_DECODER, **kw}, factor=4.0)


CASES = {
    "lm-gqa": olmo2(),
    "lm-tied-bias-dynamic-rope": olmo2(
        tie_word_embeddings=True, attention_bias=True, rms_norm_eps=1e-3,
        rope_parameters={"rope_type": "dynamic", "rope_theta": 500.0, "factor": 2.0}),
    "base-mha-gelu": olmo2("Olmo2Model", num_key_value_heads=6, hidden_act="gelu"),
}  # fmt: skip


test_same_numbers, test_round_trip = decoder_checks(CASES)


def test_greedy_decoding_same_tokens() -> None:
    decoder_greedy(olmo2()())


def test_spec_and_weights() -> None:
    hf = CASES["lm-gqa"]()
    spec = spec_from_hf(hf)
    block = spec.block
    assert (block.layout, block.norm.type, block.norm.eps) == ("reordered_norm", "rmsnorm", 1e-5)
    assert (block.attention.qk_norm.type, block.attention.qk_norm_over) == ("rmsnorm", "width")
    assert not (block.post_attention_norm or block.post_ffn_norm)
    model = from_hf(hf)
    layer, tx = hf.model.layers[1], model.blocks[1]
    assert torch.equal(tx.norm1.weight, layer.post_attention_layernorm.weight)
    assert torch.equal(tx.norm2.weight, layer.post_feedforward_layernorm.weight)
    assert tx.attention.q_norm.norm.weight.shape == (48,)
    assert tx.attention.k_norm.norm.weight.shape == (16,)


def test_width_norm_is_not_a_norm_per_head() -> None:
    """Normalizing each head alone (qk_norm_over: heads, same weights tiled) moves the numbers."""
    model = from_hf(CASES["lm-gqa"]())
    x = padded_batch("right", VOCAB)
    with torch.no_grad():
        width = model(x["input_ids"], x["attention_mask"]).logits
        for block in model.blocks:
            for name in ("q_norm", "k_norm"):
                norm = getattr(block.attention, name).norm
                per_head = RMSNorm(8, eps=norm.eps)
                per_head.weight.copy_(norm.weight[:8])
                setattr(block.attention, name, per_head)
        heads = model(x["input_ids"], x["attention_mask"]).logits
    assert (width - heads).abs().max() > 1e-2


def test_a_pre_norm_model_is_not_olmo2() -> None:
    model = from_hf(CASES["lm-gqa"]())
    data = model.spec.model_dump(mode="json")
    data["block"]["attention"]["qk_norm_over"] = "heads"
    with pytest.raises(HFConversionError, match=r"olmo2: block\.attention\.qk_norm_over"):
        to_hf(txblocks.build(data), family="olmo2")


def test_unsupported_options_are_listed_together() -> None:
    config = transformers.Olmo2Config(
        hidden_size=48, num_attention_heads=6, hidden_act="relu2",
        rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0})
    with pytest.raises(HFConversionError) as info:
        spec_from_hf(config)
    assert {p.path for p in info.value.problems} == {"hidden_act", "rope_parameters"}
