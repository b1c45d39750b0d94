"""txblocks-template: txblocks' conformance checks, the formula, and a spec that uses it."""

from __future__ import annotations

import math
from importlib.metadata import entry_points

import pytest
import torch
import txblocks
from txblocks.testing import check_component

from txblocks_template import plugin

SPEC = {
    "arch": "decoder", "vocab_size": 64, "max_seq_len": 32, "d_model": 32, "n_layers": 2,
    "n_heads": 4, "block": {"norm": {"type": "scalenorm", "eps": 1e-6}},
}


@pytest.fixture
def registry() -> txblocks.Registry:
    """txblocks' built-ins and this plugin, registered explicitly (works before install)."""
    return txblocks.load_registry(autoload=False, plugins=[plugin])


@pytest.mark.parametrize("eps", [1e-5, 0.1])
def test_conformance(registry, eps):
    check_component(registry, "norm", "scalenorm", eps=eps)


def test_formula(registry):
    norm = registry.config("norm", "scalenorm").build(16)
    x = torch.randn(2, 3, 16)
    torch.testing.assert_close(norm(x), math.sqrt(16) * x / x.norm(dim=-1, keepdim=True))


def test_a_spec_using_it_validates_and_builds(registry):
    spec = txblocks.load_spec(SPEC, registry=registry)
    model = txblocks.build(spec).eval()
    assert type(model.blocks[0].norm1) is plugin.ScaleNorm
    ids = torch.randint(0, 64, (2, 7))
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (2, 7, 64) and torch.isfinite(logits).all()


def test_bad_parameters_are_spec_errors(registry):
    bad = {**SPEC, "block": {"norm": {"type": "scalenorm", "eps": 0}}}
    with pytest.raises(txblocks.SpecError, match=r"block\.norm\.eps"):
        txblocks.load_spec(bad, registry=registry)


def test_the_entry_point_is_installed():
    if plugin.__name__ not in {ep.value for ep in entry_points(group="txblocks")}:
        pytest.skip("not installed; run `pip install -e .` to test the entry point")
    assert ("norm", "scalenorm") in txblocks.load_registry()
