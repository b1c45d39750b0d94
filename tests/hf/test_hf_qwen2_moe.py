"""Qwen2-MoE: Qwen2's decoder with top-k experts and a gated shared expert, same numbers as
Hugging Face, both ways.

Tiny random models (d_model 48, GQA 6/2, 4 experts, top 2, a shared expert of another
width), every parameter perturbed, query and key weights scaled up, padded batches (both
sides), fp32, eval mode: hidden states and logits within 1e-4 on real positions, greedy
generation token for token, ``to_hf(from_hf(m))`` equal to ``m``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

transformers = pytest.importorskip("transformers")

from txblocks.hf import HFConversionError, spec_from_hf

from .conftest import (
    DECODER_IDS, decoder_greedy, decoder_parity, decoder_round_trip, perturbed, scaled,
)  # fmt: skip

QK = (".q_proj.", ".k_proj.")


def qwen2_moe(cls: str = "Qwen2MoeForCausalLM", **kw: Any) -> Callable[[], Any]:
    base = {"num_hidden_layers": 3, "hidden_size": 48, "num_attention_heads": 6,
            "num_key_value_heads": 2, "vocab_size": 97, "intermediate_size": 56,
            "moe_intermediate_size": 24, "shared_expert_intermediate_size": 40,
            "num_experts": 4, "num_experts_per_tok": 2, "max_position_embeddings": 64,
            "initializer_range": 0.1, "rms_norm_eps": 1e-5, **DECODER_IDS}  # fmt: skip
    config = transformers.Qwen2MoeConfig(**{**base, **kw})
    return lambda: scaled(perturbed(lambda: getattr(transformers, cls)(config)), QK)


CASES = {
    "lm-every-layer": qwen2_moe(),
    # layers 1 (step 2) sparse; 0 and 2 dense; windows of 4 on layers 0 and 2
    "lm-step2-windows-normalized-no-qkv-bias": qwen2_moe(
        decoder_sparse_step=2, use_sliding_window=True, sliding_window=4, max_window_layers=3,
        norm_topk_prob=True, qkv_bias=False),
    "base-mlp-only-tied-top1": qwen2_moe("Qwen2MoeModel", mlp_only_layers=[0],
                                         num_experts_per_tok=1, tie_word_embeddings=True),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("side", ["right", "left"])
def test_same_numbers(case: str, side: str) -> None:
    decoder_parity(CASES[case](), side)


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip(case: str) -> None:
    decoder_round_trip(CASES[case]())


def test_greedy_generation() -> None:
    decoder_greedy(CASES["lm-step2-windows-normalized-no-qkv-bias"]())


def test_spec() -> None:
    spec = spec_from_hf(CASES["lm-step2-windows-normalized-no-qkv-bias"]())
    ffns = [spec.block_for(i).ffn for i in range(3)]
    assert [f.type for f in ffns] == ["glu", "moe", "glu"]
    moe = ffns[1]
    assert (moe.experts, moe.top_k, moe.normalize_top_k, moe.expert.hidden) == (4, 2, True, 24)
    assert (moe.shared_experts, moe.shared_hidden, moe.shared_gate) == (1, 40, True)
    assert ffns[0].hidden == 56
    windows = [getattr(spec.block_for(i).attention.mask, "window", None) for i in range(3)]
    assert windows == [4, None, 4]
    assert spec.block.attention.qkv_bias is False


def test_refused_options() -> None:
    config = transformers.Qwen2MoeConfig(hidden_act="mish", layer_types=["sliding_attention"],
                                         num_hidden_layers=1)  # fmt: skip
    with pytest.raises(HFConversionError) as info:
        spec_from_hf(config, hf_class="Qwen2MoeForCausalLM")
    assert {p.path for p in info.value.problems} == {"hidden_act", "layer_types"}
