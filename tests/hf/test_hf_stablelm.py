"""StableLM <-> txblocks: same numbers as Hugging Face, both ways.

Tiny random models (d_model 48, GQA 6/2), every parameter perturbed (LayerNorm weights and
biases too) and q, k scaled up (positions matter), fp32, padded batches on both sides:
hidden states and logits within 1e-4 on real positions; ``to_hf(from_hf(m))`` is ``m``;
greedy decoding gives HF's tokens. RoPE on part of each head: StableLM's default 0.25
(2 of 8 dims) and 0.5.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

transformers = pytest.importorskip("transformers")

from txblocks.hf import HFConversionError, spec_from_hf

from .conftest import TINY_DECODER, config_problems, decoder_checks, decoder_greedy, tiny_decoder


def stablelm(cls: str = "StableLmForCausalLM", **kw: Any) -> Callable[[], Any]:
    base = {k: v for k, v in TINY_DECODER.items() if k != "rope_parameters"}
    return tiny_decoder("StableLmConfig", cls, {**base, **kw}, factor=4.0)


HALF = {"rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 0.5}

CASES = {
    "lm-qkv-bias-half-rotary": stablelm(use_qkv_bias=True, rope_parameters=HALF),
    "lm-tied-default-rotary": stablelm(tie_word_embeddings=True, rope_theta=100.0),
    "base-mha-gelu-tanh": stablelm("StableLmModel", num_key_value_heads=6,
                                   hidden_act="gelu_pytorch_tanh", rope_parameters=HALF),
    # x + attn(ln(x)) + mlp(ln(x)): the parallel layout with one shared norm
    "lm-parallel-residual": stablelm(use_parallel_residual=True, use_qkv_bias=True),
}  # fmt: skip


test_same_numbers, test_round_trip = decoder_checks(CASES)


@pytest.mark.parametrize("parallel", [False, True])
def test_greedy_decoding_same_tokens(parallel: bool) -> None:
    decoder_greedy(stablelm(use_qkv_bias=True, rope_parameters=HALF,
                            use_parallel_residual=parallel)())  # fmt: skip


def test_parallel_residual_is_one_shared_norm() -> None:
    spec = spec_from_hf(CASES["lm-parallel-residual"]())
    assert (spec.block.layout, spec.block.shared_norm) == ("parallel", True)


def test_spec() -> None:
    spec = spec_from_hf(CASES["lm-tied-default-rotary"]())
    assert (spec.position.fraction, spec.position.theta) == (0.25, 100.0)
    norm = spec.block.norm
    assert (norm.type, norm.eps, norm.bias, norm.affine) == ("layernorm", 1e-5, True, True)
    attention = spec.block.attention
    assert (attention.qkv_bias, attention.out_bias, spec.kv_heads) == (False, False, 2)


def test_unsupported_options_are_listed_together() -> None:
    config = transformers.StableLmConfig(
        hidden_size=48, num_attention_heads=6, num_key_value_heads=6, qk_layernorm=True,
        use_parallel_residual=True, hidden_dropout=0.1, hidden_act="relu2",
    )  # fmt: skip
    found = config_problems(config)
    assert set(found) == {"qk_layernorm", "hidden_dropout", "hidden_act"}
    assert "shared by all heads" in found["qk_layernorm"]


def test_an_odd_rotary_width_is_refused() -> None:
    """head_dim 8 · 0.125 = 1 dim: HF would rotate it alone; txblocks rotates pairs."""
    config = transformers.StableLmConfig(hidden_size=48, num_attention_heads=6,
                                         partial_rotary_factor=0.125)  # fmt: skip
    with pytest.raises(HFConversionError, match=r"rope_parameters: .*int\(8 · 0.125\) = 1"):
        spec_from_hf(config)
