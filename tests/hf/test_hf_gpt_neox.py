"""GPT-NeoX both ways: qkv fused per head (regrouped), partial RoPE, parallel or sequential."""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

from txblocks.hf import HFConversionError, spec_from_hf
from txblocks.hf.gpt_neox import GroupedQKV

from .conftest import (
    DECODER_IDS, decoder_checks, decoder_greedy, perturbed, positions_matter, scaled,
)  # fmt: skip

QKV = ("query_key_value",)


def neox(cls: str, **kw: Any) -> Callable[[], Any]:
    # head_dim 8; partial_rotary_factor 0.5 rotates 4 dims
    base = {"num_hidden_layers": 3, "hidden_size": 48, "num_attention_heads": 6,
            "vocab_size": 97, "max_position_embeddings": 40, "intermediate_size": 40,
            "rope_parameters": {"rope_type": "default", "rope_theta": 500.0,
                                "partial_rotary_factor": 0.5},
            "initializer_range": 0.2, **DECODER_IDS}  # fmt: skip
    config = transformers.GPTNeoXConfig(**{**base, **kw})
    return lambda: scaled(getattr(transformers, cls)(config), QKV)


LINEAR = {"rope_type": "linear", "rope_theta": 1000.0, "factor": 2.0, "partial_rotary_factor": 1.0}
CASES = {
    "lm-parallel-partial": neox("GPTNeoXForCausalLM"),
    "lm-sequential-tied-linear-nobias": neox(
        "GPTNeoXForCausalLM", use_parallel_residual=False, tie_word_embeddings=True,
        attention_bias=False, rope_parameters=LINEAR, hidden_act="gelu_new"),
    "base-quarter": neox("GPTNeoXModel", rope_parameters={
        "rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25}),
}  # fmt: skip


test_same_numbers, test_round_trip = decoder_checks(
    CASES, make=perturbed, check_positions=False)  # fmt: skip


def test_greedy_decoding() -> None:
    decoder_greedy(perturbed(neox("GPTNeoXForCausalLM", num_hidden_layers=2)))


def test_positions_matter() -> None:
    positions_matter(perturbed(CASES["lm-parallel-partial"]))


def test_spec() -> None:
    spec = spec_from_hf(perturbed(CASES["lm-parallel-partial"]))
    assert (spec.block.layout, spec.position.fraction, spec.position.theta) == ("parallel", 0.5, 500)
    assert spec_from_hf(perturbed(CASES["lm-sequential-tied-linear-nobias"])).block.layout == (
        "pre_norm")


@pytest.mark.parametrize(("heads", "kv_heads"), [(6, 6), (6, 2), (6, 1)])
def test_grouped_qkv_regroups_rows_and_back(heads: int, kv_heads: int) -> None:
    spec = types.SimpleNamespace(n_heads=heads, kv_heads=kv_heads, head_size=4)
    regroup = GroupedQKV().bind(spec)
    rows = (heads + 2 * kv_heads) * 4
    # HF rows labelled (group, slot, dim): slot < r are queries, then the key, the value
    r = heads // kv_heads
    labels = torch.tensor([[g, s, d] for g in range(kv_heads) for s in range(r + 2)
                           for d in range(4)])  # fmt: skip
    tx = regroup.to_tx([labels])
    q, k, v = tx.split([heads * 4, kv_heads * 4, kv_heads * 4])
    assert (q[:, 1] < r).all() and (k[:, 1] == r).all() and (v[:, 1] == r + 1).all()
    assert q[:, 0].tolist() == [h // r for h in range(heads) for _ in range(4)]  # head h, group h // r
    torch.testing.assert_close(regroup.to_hf(tx, [labels])[0], labels)
    weight = torch.randn(rows, 5)
    torch.testing.assert_close(regroup.to_hf(regroup.to_tx([weight]), [weight])[0], weight)


def test_odd_rotary_dims_are_refused() -> None:
    config = transformers.GPTNeoXConfig(hidden_size=48, num_attention_heads=6, rope_parameters={
        "rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.375})  # 3 dims
    with pytest.raises(HFConversionError, match="rope_parameters: .*3 dims"):
        spec_from_hf(config)
