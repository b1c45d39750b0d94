"""Every built-in norm, activation and ffn against its formula, written here from the papers."""

from __future__ import annotations

import math

import pytest
import torch

TOL = dict(atol=1e-5, rtol=1e-5)

ACTIVATIONS = {
    "relu": lambda x: torch.clamp(x, min=0),
    "gelu": lambda x: 0.5 * x * (1 + torch.erf(x / math.sqrt(2))),
    "gelu_tanh": lambda x: 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
    "silu": lambda x: x / (1 + torch.exp(-x)),
    "quick_gelu": lambda x: x / (1 + torch.exp(-1.702 * x)),
}


def _layernorm(x, m):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    y = (x - mu) / torch.sqrt(var + m.eps) * m.weight
    return y + m.bias if m.bias is not None else y


def _rmsnorm(x, m):
    return x / torch.sqrt((x**2).mean(-1, keepdim=True) + m.eps) * m.weight


NORMS = {"layernorm": _layernorm, "rmsnorm": _rmsnorm}


def _builtin(registry, kind):
    return [e.name for e in registry.entries(kind) if e.owner.name == "txblocks"]


def test_every_builtin_has_a_reference(registry):
    assert set(_builtin(registry, "activation")) == set(ACTIVATIONS)
    assert set(_builtin(registry, "norm")) == set(NORMS)
    assert set(_builtin(registry, "ffn")) >= {"mlp", "glu"}


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_formula(registry, gen, name):
    act = registry.config("activation", name).build()
    x = torch.randn(4, 7, 9, generator=gen) * 3
    torch.testing.assert_close(act(x), ACTIVATIONS[name](x), **TOL)


@pytest.mark.parametrize("params", [{"type": "layernorm"}, {"type": "layernorm", "bias": False, "eps": 1e-3},
                                    {"type": "rmsnorm"}, {"type": "rmsnorm", "eps": 1e-2}])
def test_norm_formula(registry, gen, params):
    params = dict(params)
    name = params.pop("type")
    norm = registry.config("norm", name, **params).build(12)
    with torch.no_grad():
        for p in norm.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    x = torch.randn(3, 5, 12, generator=gen) * 2 + 1
    torch.testing.assert_close(norm(x), NORMS[name](x, norm), **TOL)


@pytest.mark.parametrize("activation", ["silu", "gelu", "relu"])
def test_glu_formula(registry, gen, activation):
    ffn = registry.config("ffn", "glu", hidden=24, activation=activation).build(16)
    x = torch.randn(2, 5, 16, generator=gen)
    w_gate, w_up = ffn.gate_up.weight[:24], ffn.gate_up.weight[24:]
    expected = (ACTIVATIONS[activation](x @ w_gate.T) * (x @ w_up.T)) @ ffn.down.weight.T
    torch.testing.assert_close(ffn(x), expected, **TOL)


def test_mlp_formula_and_default_width(registry, gen):
    ffn = registry.config("ffn", "mlp", activation="gelu_tanh").build(16)
    assert ffn.up.out_features == 64  # 4 · d_model
    x = torch.randn(2, 5, 16, generator=gen)
    hidden = ACTIVATIONS["gelu_tanh"](x @ ffn.up.weight.T + ffn.up.bias)
    torch.testing.assert_close(ffn(x), hidden @ ffn.down.weight.T + ffn.down.bias, **TOL)


def test_glu_default_width_is_eight_thirds_rounded(registry):
    ffn = registry.config("ffn", "glu").build(96)
    assert ffn.hidden == 256  # ceil(8/3 · 96 = 256 / 64) · 64
    assert ffn.down.bias is None
