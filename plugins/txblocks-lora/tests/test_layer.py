"""LoRALinear on its own, against the formula of Hu et al. (2021) written out by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from txblocks_lora import LoRALinear


def _layer(gen: torch.Generator, *, bias: bool = True, rank: int = 3, alpha: float = 5.0,
           dropout: float = 0.0) -> tuple[nn.Linear, LoRALinear]:
    base = nn.Linear(7, 11, bias=bias)
    with torch.no_grad():
        base.weight.copy_(torch.randn(11, 7, generator=gen))
        if bias:
            base.bias.copy_(torch.randn(11, generator=gen))
    layer = LoRALinear(base, rank, alpha, dropout)
    with torch.no_grad():  # a trained adapter: B no longer zero
        layer.lora_A.copy_(torch.randn(rank, 7, generator=gen))
        layer.lora_B.copy_(torch.randn(11, rank, generator=gen))
    return base, layer


@pytest.mark.parametrize("bias", [True, False])
def test_forward_is_the_formula(gen, bias):
    base, layer = _layer(gen, bias=bias)
    x = torch.randn(2, 5, 7, generator=gen)
    W, A, B = base.weight.detach(), layer.lora_A.detach(), layer.lora_B.detach()
    expected = x @ W.T + (x @ A.T @ B.T) * (5.0 / 3)
    if bias:
        expected = expected + base.bias.detach()
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    assert layer.scaling == pytest.approx(5.0 / 3)


def test_parameters_are_the_base_ones_and_state_dict_names(gen):
    base, layer = _layer(gen)
    assert layer.weight is base.weight and layer.bias is base.bias
    assert list(layer.state_dict()) == ["weight", "bias", "lora_A", "lora_B"]
    assert layer.lora_A.shape == (3, 7) and layer.lora_B.shape == (11, 3)
    no_bias = LoRALinear(nn.Linear(7, 11, bias=False), 2, 4.0)
    assert no_bias.bias is None and list(no_bias.state_dict()) == ["weight", "lora_A", "lora_B"]


def test_a_fresh_layer_computes_the_base_map(gen):
    base = nn.Linear(7, 11)
    layer = LoRALinear(base, 4, 8.0)
    assert torch.count_nonzero(layer.lora_B) == 0
    bound = 1 / math.sqrt(7)  # kaiming-uniform with a=√5, as nn.Linear's weight
    assert layer.lora_A.abs().max() <= bound and layer.lora_A.std() > bound / 4
    x = torch.randn(3, 7, generator=gen)
    torch.testing.assert_close(layer(x), base(x), rtol=0, atol=0)


def test_merge_and_unmerge(gen):
    base, layer = _layer(gen)
    x = torch.randn(4, 7, generator=gen)
    before, weight = layer(x), base.weight.detach().clone()
    layer.merge()
    assert layer.merged
    torch.testing.assert_close(base.weight.detach(), weight + layer.delta_weight().detach())
    torch.testing.assert_close(layer(x), before, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer(x), base(x))  # merged: the plain linear map
    layer.merge()  # a second merge does nothing
    torch.testing.assert_close(layer(x), before, rtol=1e-5, atol=1e-5)
    layer.unmerge()
    assert not layer.merged
    torch.testing.assert_close(base.weight.detach(), weight, rtol=0, atol=1e-5)
    torch.testing.assert_close(layer(x), before, rtol=1e-5, atol=1e-5)


def test_dropout_acts_on_the_adapter_input_only(gen, seed):
    base, layer = _layer(gen, dropout=0.5)
    x = torch.randn(64, 7, generator=gen)
    layer.eval()
    W, A, B = base.weight.detach(), layer.lora_A.detach(), layer.lora_B.detach()
    full = x @ W.T + base.bias.detach() + (x @ A.T @ B.T) * layer.scaling
    torch.testing.assert_close(layer(x), full, rtol=1e-5, atol=1e-5)
    layer.train()
    torch.manual_seed(seed)
    kept = torch.nn.functional.dropout(x, 0.5)
    torch.manual_seed(seed)
    out = layer(x)
    expected = x @ W.T + base.bias.detach() + (kept @ A.T @ B.T) * layer.scaling
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, full)


def test_rank_must_be_positive():
    with pytest.raises(ValueError, match="rank must be at least 1, got 0"):
        LoRALinear(nn.Linear(3, 3), 0, 1.0)
