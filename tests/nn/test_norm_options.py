"""The norm options that some families need, against their formulas written out here.

* ``rmsnorm {unit_offset: true}``: Gemma's ``x / rms(x) · (1 + w)`` (Gemma Team 2024).
* ``layernorm {affine: false}``: OLMo's LayerNorm without parameters (Groeneveld et al. 2024).
"""

from __future__ import annotations

import pytest
import torch

from txblocks import SpecError, load_spec

TOL = dict(atol=1e-5, rtol=1e-5)


def _rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.sqrt((x**2).mean(-1, keepdim=True) + eps)


def _layernorm(x: torch.Tensor, eps: float) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps)


@pytest.mark.parametrize("eps", [1e-6, 1e-2])
def test_unit_offset_rmsnorm_scales_by_one_plus_weight(registry, gen, eps):
    norm = registry.config("norm", "rmsnorm", eps=eps, unit_offset=True).build(12)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(12, generator=gen))
    x = torch.randn(3, 5, 12, generator=gen) * 2 + 1
    torch.testing.assert_close(norm(x), _rms(x, eps) * (1 + norm.weight), **TOL)


def test_unit_offset_rmsnorm_starts_as_the_plain_norm(registry, gen):
    offset = registry.config("norm", "rmsnorm", unit_offset=True).build(12)
    plain = registry.config("norm", "rmsnorm").build(12)
    assert torch.equal(offset.weight, torch.zeros(12))  # stored as Gemma stores it
    x = torch.randn(4, 12, generator=gen)
    torch.testing.assert_close(offset(x), plain(x), rtol=0, atol=0)
    offset.weight.data.fill_(3.0)
    offset.reset_parameters()
    assert torch.equal(offset.weight, torch.zeros(12))


def test_unit_offset_rmsnorm_multiplies_in_float32(registry, gen):
    """Gemma casts ``x̂ · (1 + w)`` to the input dtype once, after the product."""
    norm = registry.config("norm", "rmsnorm", unit_offset=True).build(16).to(torch.bfloat16)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(16, generator=gen))
    x = (torch.randn(2, 7, 16, generator=gen) * 3).to(torch.bfloat16)
    expected = (_rms(x.float(), norm.eps) * (1 + norm.weight.float())).to(torch.bfloat16)
    got = norm(x)
    assert got.dtype == torch.bfloat16
    # one rounding, of a float32 product: equal to the formula's but where float32's own
    # last bit (rsqrt against 1 / sqrt) tips a rounding, by one bfloat16 step at most
    torch.testing.assert_close(got, expected, rtol=2**-7, atol=0)
    assert (got != expected).float().mean() <= 0.02
    # rounding first (x̂ and 1 + w in bfloat16, then their product) differs far more often
    twice = _rms(x.float(), norm.eps).to(torch.bfloat16) * (1 + norm.weight.float()).to(torch.bfloat16)
    assert (twice != expected).float().mean() > 0.05


@pytest.mark.parametrize("eps", [1e-5, 1e-2])
def test_layernorm_without_affine_has_no_parameters(registry, gen, eps):
    config = registry.config("norm", "layernorm", eps=eps, affine=False)
    assert config.bias is False  # follows affine unless given
    norm = config.build(12)
    assert list(norm.parameters()) == []
    x = torch.randn(3, 5, 12, generator=gen) * 2 + 1
    torch.testing.assert_close(norm(x), _layernorm(x, eps), **TOL)


def test_layernorm_bias_needs_affine(registry):
    with pytest.raises(ValueError, match="bias: true needs affine: true"):
        registry.config("norm", "layernorm", affine=False, bias=True)
    assert registry.config("norm", "layernorm", affine=False, bias=False).bias is False


SPEC = {"arch": "decoder", "vocab_size": 50, "d_model": 16, "n_layers": 2, "n_heads": 2,
        "position": "rope", "block": {"ffn": {"type": "glu", "hidden": 24}}}  # fmt: skip


@pytest.mark.parametrize(
    ("norm", "parameters"),
    [({"type": "rmsnorm", "unit_offset": True}, 1), ({"type": "layernorm", "affine": False}, 0)],
)
def test_the_options_in_a_spec_round_trip_and_build(registry, norm, parameters):
    import txblocks

    data = {**SPEC, "block": {**SPEC["block"], "norm": norm}}
    spec = load_spec(data, registry=registry)
    assert load_spec(spec.to_yaml(), registry=registry) == spec
    model = txblocks.build(spec, registry=registry)
    norms = [model.blocks[0].norm1, model.blocks[1].norm2, model.final_norm]
    assert all(len(list(n.parameters())) == parameters for n in norms)


def test_a_contradictory_layernorm_is_a_spec_error_with_its_path(registry):
    data = {**SPEC, "block": {**SPEC["block"], "norm": {"type": "layernorm", "affine": False,
                                                          "bias": True}}}  # fmt: skip
    with pytest.raises(SpecError, match=r"block\.norm.*bias: true needs affine: true"):
        load_spec(data, registry=registry)
