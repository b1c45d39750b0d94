"""`.inf` and `.nan` in a spec are validation errors with their path, like any bad value."""

from __future__ import annotations

import pytest
import torch

import txblocks
from txblocks import ComponentConfig, GenerationConfig, SpecError, load_spec

BASE = """\
arch: decoder
vocab_size: 32
max_seq_len: 16
d_model: 16
n_layers: 2
n_heads: 2
"""

FINITE = r"input should be a finite number"


@pytest.mark.parametrize(("yaml", "path"), [
    ("init_std: .inf", "init_std"),
    ("block: {attention: {softcap: .inf}}", r"block\.attention\.softcap"),
    ("block: {attention: {scale: .nan}}", r"block\.attention\.scale"),
    ("layers: [{select: 0, attention: {softcap: .nan}}]", r"layers\[0\]\.attention\.softcap"),
    ("embedding: {scale: -.inf}", r"embedding\.scale"),
    ("block: {norm: {type: rmsnorm, eps: .inf}}", r"block\.norm\.eps"),
    ("position: {type: rope, theta: .nan}", r"position\.theta"),
    ("block: {ffn: {type: moe, experts: 2, top_k: 1, expert: {type: mlp, dropout: .nan}}}",
     r"block\.ffn\.expert\.dropout"),
], ids=["init_std", "softcap", "scale", "override", "embedding-scale", "norm-eps", "rope-theta",
        "nested"])
def test_non_finite_floats_are_spec_errors(registry, yaml, path):
    with pytest.raises(SpecError, match=rf"(?m)^  {path}: {FINITE}"):
        load_spec(BASE + yaml + "\n", registry=registry)


def test_a_plugin_config_rejects_non_finite_floats(registry):
    class Gain(ComponentConfig):
        """A norm with a gain."""

        gain: float = 1.0

    registry.add("norm", "gain", lambda dim, config: torch.nn.Identity(), Gain)
    with pytest.raises(SpecError, match=rf"(?m)^  block\.norm\.gain: {FINITE}; got inf"):
        load_spec(BASE + "block: {norm: {type: gain, gain: .inf}}\n", registry=registry)
    with pytest.raises(SpecError, match=rf"gain: {FINITE}"):
        registry.config("norm", "gain", gain=float("nan"))
    assert load_spec(BASE + "block: {norm: {type: gain, gain: 1.0e+30}}\n",
                     registry=registry).block.norm.gain == 1e30


def test_assignment_is_validated_too(registry):
    spec = load_spec(BASE, registry=registry)
    with pytest.raises(ValueError, match="(?i)" + FINITE):
        spec.init_std = float("inf")


@pytest.mark.parametrize("setting", [{"temperature": float("nan")}, {"top_p": float("nan")},
                                     {"repetition_penalty": float("inf")},
                                     {"length_penalty": float("nan")}])
def test_generation_settings_reject_non_finite_floats(setting):
    with pytest.raises(ValueError, match=rf"{next(iter(setting))}\n.*finite number"):
        GenerationConfig(**setting)


def test_finite_values_still_build(registry):
    spec = load_spec(BASE + "block: {attention: {softcap: 50.0, scale: 0.25}}\ninit_std: 0.01\n",
                     registry=registry)
    assert txblocks.build(spec).blocks[0].attention is not None
