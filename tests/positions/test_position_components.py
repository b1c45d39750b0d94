"""The `position` components: registration, config validation, factories."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from txblocks.components import positions
from txblocks.errors import BuildError
from txblocks.nn.dims import ModelDims
from txblocks.nn.positional import PositionalScheme
from txblocks.nn.positions import (
    ALiBi,
    DynamicNTKScaling,
    LearnedPositions,
    LinearScaling,
    Llama3Scaling,
    RelativePositionBias,
    RotaryPositions,
    SinusoidalPositions,
)
from txblocks.registry import Registry

DIMS = ModelDims(d_model=32, n_heads=4, n_kv_heads=2, head_dim=8, max_seq_len=16, n_layers=2)
NAMES = ["alibi", "learned", "none", "relative_bias", "relative_bias_2d", "rope", "sinusoidal"]


@pytest.fixture
def reg() -> Registry:
    registry = Registry()
    positions.register(registry)
    return registry


def build(reg: Registry, name: str, dims: ModelDims = DIMS, **params) -> PositionalScheme:
    entry = reg.get("position", name)
    return entry.factory(dims, entry.config(**params))


def test_every_scheme_is_registered_with_a_description(reg: Registry) -> None:
    assert reg.names("position") == NAMES
    for entry in reg.entries("position"):
        assert entry.description, entry.name
        assert "type" not in entry.config.model_fields


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("none", PositionalScheme),
        ("sinusoidal", SinusoidalPositions),
        ("learned", LearnedPositions),
        ("rope", RotaryPositions),
        ("alibi", ALiBi),
        ("relative_bias", RelativePositionBias),
    ],
)
def test_defaults_build_the_scheme(reg: Registry, name: str, cls: type) -> None:
    scheme = build(reg, name)
    assert type(scheme) is cls


def test_factories_pass_dims_and_fields(reg: Registry) -> None:
    learned = build(reg, "learned", offset=2)
    assert learned.embedding.weight.shape == (DIMS.max_seq_len + 2, DIMS.d_model)
    assert build(reg, "sinusoidal").embed(torch.arange(3)[None]).shape == (1, 3, DIMS.d_model)
    alibi = build(reg, "alibi")
    assert len(alibi.slopes) == DIMS.n_heads
    rel = build(reg, "relative_bias", num_buckets=16, max_distance=64)
    assert rel.relative_attention_bias.weight.shape == (16, DIMS.n_heads)
    rope = build(reg, "rope", theta=500000, fraction=0.5, interleaved=True)
    assert (rope.rotary_dim, rope.theta, rope.interleaved) == (4, 500000.0, True)


@pytest.mark.parametrize(
    ("scaling", "want"),
    [
        (None, None),
        ({"type": "linear", "factor": 2}, LinearScaling(2.0)),
        ({"type": "dynamic", "factor": 2}, DynamicNTKScaling(2.0, max_seq_len=DIMS.max_seq_len)),
        ({"type": "llama3"}, Llama3Scaling(8.0, 1.0, 4.0, 8192)),
        (
            {"type": "llama3", "factor": 32, "low_freq_factor": 2, "high_freq_factor": 8,
             "original_max_seq_len": 4096},
            Llama3Scaling(32.0, 2.0, 8.0, 4096),
        ),
    ],
)  # fmt: skip
def test_rope_scaling_configs(reg: Registry, scaling: dict | None, want) -> None:
    assert build(reg, "rope", scaling=scaling).scaling == want


@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("rope", {"theta": 0}, "theta"),
        ("rope", {"fraction": 0}, "fraction"),
        ("rope", {"fraction": 1.5}, "fraction"),
        ("rope", {"rotary": 1.0}, "rotary"),
        ("rope", {"scaling": {"type": "linear", "factor": 0}}, "factor"),
        ("rope", {"scaling": {"type": "linear"}}, "factor"),
        ("rope", {"scaling": {"type": "dynamic", "factor": -1}}, "factor"),
        ("rope", {"scaling": {"type": "yarn", "factor": 2}}, "linear"),
        ("rope", {"scaling": {"type": "linear", "factor": 2, "theta": 1}}, "theta"),
        ("rope", {"scaling": {"type": "llama3", "high_freq_factor": 1}}, "high_freq_factor"),
        ("rope", {"scaling": {"type": "llama3", "original_max_seq_len": 0}}, "original_max"),
        ("sinusoidal", {"base": -1}, "base"),
        ("learned", {"offset": -1}, "offset"),
        ("relative_bias", {"num_buckets": 0}, "num_buckets"),
        ("relative_bias", {"num_buckets": 32, "max_distance": 16}, "max_distance"),
        ("alibi", {"slopes": [1]}, "slopes"),
        ("none", {"theta": 1}, "theta"),
    ],
)
def test_invalid_configs_are_rejected(reg: Registry, name: str, params: dict, field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        reg.get("position", name).config(**params)


@pytest.mark.parametrize(("fraction", "rotary_dim"), [(0.375, 3), (0.1, 0), (0.625, 5)])
def test_odd_or_zero_rotary_dim_is_a_build_error(
    reg: Registry, fraction: float, rotary_dim: int
) -> None:
    with pytest.raises(BuildError, match=rf"fraction.*= {rotary_dim} dims, which must be even"):
        build(reg, "rope", fraction=fraction)


def test_dynamic_scaling_needs_more_than_two_rotary_dims(reg: Registry) -> None:
    with pytest.raises(BuildError, match="scaling: dynamic NTK scaling needs rotary_dim > 2"):
        build(reg, "rope", fraction=0.25, scaling={"type": "dynamic", "factor": 2})


def test_rope_check_reports_the_field_before_build(reg: Registry) -> None:
    config = reg.get("position", "rope").config(fraction=0.375)
    (problem,) = config.check(DIMS)
    assert problem.startswith("fraction: ") and "= 3 dims" in problem
    assert "e.g. fraction: 0.5 (rotary_dim 4)" in problem
    assert reg.get("position", "rope").config(fraction=0.5).check(DIMS) == []
    dynamic = reg.get("position", "rope").config(
        fraction=0.25, scaling={"type": "dynamic", "factor": 2}
    )
    assert dynamic.check(DIMS)[0].startswith("scaling: ")
