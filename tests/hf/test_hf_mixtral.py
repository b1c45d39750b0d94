"""Mixtral: Mistral's decoder with a top-2 MoE of GLU experts, same numbers as Hugging Face.

Tiny random models (d_model 48, GQA 6/2, 4 experts, top 2), every parameter perturbed, a
padded batch (both sides), fp32, eval mode; logits and hidden states within 1e-4 on real
positions. The router is checked on its own too: float32 softmax over all experts, top-k,
renormalised, in float32 and bfloat16.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

import txblocks
from txblocks.hf import HFConversionError, from_hf, spec_from_hf, to_hf
from txblocks.hf.mixtral import MIXTRAL
from txblocks.hf.weights import copy_weights
from txblocks.nn.moe import route

from .conftest import perturbed

TOL = 1e-4
VOCAB, T = 97, 12


def mixtral(cls: str = "MixtralForCausalLM", **kw: Any) -> Any:
    base = {"num_hidden_layers": 2, "hidden_size": 48, "num_attention_heads": 6,
            "num_key_value_heads": 2, "vocab_size": VOCAB, "intermediate_size": 40,
            "num_local_experts": 4, "num_experts_per_tok": 2, "max_position_embeddings": 64,
            "initializer_range": 0.1, "bos_token_id": 0, "eos_token_id": 0}  # fmt: skip
    return perturbed(lambda: getattr(transformers, cls)(transformers.MixtralConfig(**{**base, **kw})))


def batch(side: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, VOCAB, (3, T), generator=g)
    mask = torch.ones_like(ids)
    for row, length in ((1, 7), (2, 3)):
        if side == "right":
            mask[row, length:] = 0
        else:
            mask[row, : T - length] = 0
    return ids.masked_fill(mask == 0, 1), mask


def diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    keep = mask.bool()
    return (a[keep] - b[keep]).abs().max().item()


CASES = {
    "lm-window5": lambda: mixtral(sliding_window=5),
    "lm-tied-no-window-head-dim": lambda: mixtral(tie_word_embeddings=True, head_dim=10),
    "base-top1-of-3": lambda: mixtral("MixtralModel", num_local_experts=3, num_experts_per_tok=1),
}


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("case", list(CASES))
def test_from_hf_same_numbers(case: str, side: str) -> None:
    hf = CASES[case]()
    model = from_hf(hf)
    ids, mask = batch(side)
    with torch.no_grad():
        hidden = hf.base_model(ids, attention_mask=mask).last_hidden_state
        out = model(ids, mask)
        logits = hf(ids, attention_mask=mask).logits if hf.base_model is not hf else None
    assert hidden.abs().max() > 0.1
    assert diff(hidden, out.last_hidden_state, mask) <= TOL
    assert (logits is None) == (out.logits is None)
    if logits is not None:
        assert diff(logits, out.logits, mask) <= TOL


def test_spec_is_a_top_k_moe_of_glu_experts() -> None:
    spec = spec_from_hf(mixtral(sliding_window=5))
    ffn = spec.block.ffn
    assert (ffn.type, ffn.experts, ffn.top_k, ffn.normalize_top_k) == ("moe", 4, 2, True)
    assert (ffn.expert.type, ffn.expert.hidden, ffn.expert.activation.type) == ("glu", 40, "silu")
    assert (ffn.capacity_factor, ffn.router_bias, ffn.shared_experts) == (None, False, 0)
    assert spec.block.attention.mask.window == 5
    assert spec.kv_heads == 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_router_matches_hf(dtype: torch.dtype) -> None:
    """HF's router (float32 softmax -> top-k -> renormalise) and txblocks' route() agree."""
    hf = mixtral()
    gate = hf.model.layers[0].mlp.gate.to(dtype)
    x = torch.randn(50, 48, generator=torch.Generator().manual_seed(2)).to(dtype)
    with torch.no_grad():
        logits, weights, experts = gate(x)
        routing = route(torch.nn.functional.linear(x, gate.weight), 2, normalize=True)
    torch.testing.assert_close(routing.logits, logits.float(), rtol=0, atol=0)
    assert torch.equal(routing.experts, experts)
    torch.testing.assert_close(routing.weights, weights, rtol=0, atol=0)
    assert routing.weights.dtype == torch.float32  # like HF's router scores


def test_experts_are_slices_of_the_stacked_tensors() -> None:
    hf = mixtral()
    model = from_hf(hf)
    stacked = hf.model.layers[1].mlp.experts
    expert = model.blocks[1].ffn.experts[3]
    assert torch.equal(expert.gate_up.weight, stacked.gate_up_proj[3])
    assert torch.equal(expert.down.weight, stacked.down_proj[3])
    assert torch.equal(model.blocks[1].ffn.router.weight, hf.model.layers[1].mlp.gate.weight)


def test_one_layer_aux_loss_is_hf_load_balancing_loss() -> None:
    """One layer: txblocks' aux_loss is HF's aux_loss times router_aux_loss_coef.

    (With more layers HF pools the routing of all layers into one loss; txblocks sums the
    per-layer losses.)
    """
    hf = mixtral(num_hidden_layers=1, output_router_logits=True, router_aux_loss_coef=0.02)
    model = from_hf(hf)
    ids, mask = batch("right")
    with torch.no_grad():
        expected = hf(ids, attention_mask=mask).aux_loss * 0.02
        got = model(ids, mask).aux_loss
    assert abs(expected.item() - got.item()) <= 1e-6


@pytest.mark.parametrize("case", ["lm-window5", "base-top1-of-3"])
def test_round_trip(case: str) -> None:
    hf = CASES[case]()
    model = from_hf(hf)
    back = to_hf(model)
    assert type(back) is type(hf)
    source = hf.state_dict()
    for name, tensor in back.state_dict().items():
        torch.testing.assert_close(tensor, source[name], rtol=0, atol=0, msg=name)
    assert spec_from_hf(back).model_dump(exclude={"name"}) == model.spec.model_dump(
        exclude={"name"}
    )


def test_a_wrong_expert_weight_is_caught() -> None:
    hf = mixtral()
    model = from_hf(hf)
    ids, mask = batch("right")
    with torch.no_grad():
        model.blocks[0].ffn.experts[2].down.weight[0, 0] += 0.05
        y_hf, y_tx = hf(ids, attention_mask=mask).logits, model(ids, mask).logits
    assert diff(y_hf, y_tx, mask) > TOL


def test_an_expert_slice_without_a_txblocks_expert_is_reported() -> None:
    """The stacked tensors hold 4 experts; a model with 3 leaves slice 3 unread."""
    hf = mixtral()
    small = from_hf(mixtral(num_local_experts=3))
    with pytest.raises(HFConversionError) as info:
        copy_weights(small, hf, MIXTRAL, MIXTRAL.head("MixtralForCausalLM"), to_hf=False)
    messages = {p.path: p.message for p in info.value.problems}
    assert "slices [3] of 4 left unread" in messages["model.layers.0.mlp.experts.gate_up_proj"]
    assert "does not fit (3, 48)" in messages["blocks.0.ffn.router.weight"]
    big = from_hf(mixtral(num_local_experts=5))
    with pytest.raises(HFConversionError, match=r"slice 4 is outside .*gate_up_proj \(4 slices\)"):
        copy_weights(big, hf, MIXTRAL, MIXTRAL.head("MixtralForCausalLM"), to_hf=False)


def test_mixtral_preset_goes_to_mixtral() -> None:
    spec = {"extends": "mixtral", "n_layers": 2, "d_model": 48, "n_heads": 6, "vocab_size": 50,
            "block": {"ffn": {"experts": 4, "expert": {"hidden": 40}}}}  # fmt: skip
    torch.manual_seed(0)
    model = txblocks.build(spec).eval()
    hf = to_hf(model)
    assert type(hf).__name__ == "MixtralForCausalLM"
    assert (hf.config.sliding_window, hf.config.router_aux_loss_coef) == (1024, 0.02)
    ids = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids).logits, atol=TOL, rtol=0)

