"""Built-in positional schemes: none, sinusoidal, learned, rope, alibi, relative_bias.

Each factory takes ``(dims: ModelDims, config)`` and returns a
:class:`~txblocks.nn.positional.PositionalScheme` from :mod:`txblocks.nn.positions`.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

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
    RopeScaling,
    RotaryPositions,
    SinusoidalPositions,
)
from txblocks.nn.positions.relative_bias_2d import RelativePositionBias2D
from txblocks.registry import ComponentConfig, Registry

__all__ = [
    "AlibiConfig",
    "DynamicScalingConfig",
    "LearnedConfig",
    "LinearScalingConfig",
    "Llama3ScalingConfig",
    "NoPositionConfig",
    "RelativeBias2DConfig",
    "RelativeBiasConfig",
    "RopeConfig",
    "RopeScalingConfig",
    "SinusoidalConfig",
    "register",
]


class NoPositionConfig(ComponentConfig):
    """No positional information: every hook is a no-op (NoPE)."""


class SinusoidalConfig(ComponentConfig):
    """Fixed sine/cosine embeddings added to the tokens (Vaswani et al. 2017, §3.5).

    The table is fixed (not trained, not saved). ``layout: half`` gives Hugging Face's
    Marian / Pegasus table: all sines, then all cosines, of the same frequencies.

    Attributes:
        base: wavelength base of ``PE(pos, 2i) = sin(pos / base^(2i/d_model))``.
        layout: ``interleaved`` (sin, cos, sin, ... as in the paper) or ``half`` (the
            ``ceil(d/2)`` sines in the first columns, the ``floor(d/2)`` cosines after them).
    """

    base: float = Field(10000.0, gt=0, description="wavelength base (10000 in the paper)")
    layout: Literal["interleaved", "half"] = Field(
        "interleaved",
        description="interleaved: sin and cos in alternate columns (the paper); half: all sines, "
        "then all cosines (Hugging Face's Marian and Pegasus)",
    )


class LearnedConfig(ComponentConfig):
    """Learned absolute position embeddings of max_seq_len rows (GPT-2, BERT, BART).

    Attributes:
        offset: rows skipped at the start of the table; position p reads row p + offset
            (BART uses 2, GPT-2 and BERT 0).
    """

    offset: int = Field(0, ge=0, description="position p reads row p + offset (BART: 2)")


class _Scaling(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LinearScalingConfig(_Scaling):
    """Position interpolation: positions divided by ``factor`` (Chen et al. 2023)."""

    type: Literal["linear"]
    factor: float = Field(gt=0, description="positions are divided by this")


class DynamicScalingConfig(_Scaling):
    """Dynamic NTK: the base grows once a call goes past max_seq_len (Hugging Face ``dynamic``)."""

    type: Literal["dynamic"]
    factor: float = Field(gt=0, description="the NTK stretch factor")


class Llama3ScalingConfig(_Scaling):
    """Llama 3.1 frequency-dependent scaling (Hugging Face ``llama3``)."""

    type: Literal["llama3"]
    factor: float = Field(8.0, gt=0, description="divisor of the low frequencies")
    low_freq_factor: float = Field(1.0, gt=0)
    high_freq_factor: float = Field(4.0, gt=0)
    original_max_seq_len: int = Field(8192, ge=1, description="context length of pretraining")

    @model_validator(mode="after")
    def _ordered(self) -> Llama3ScalingConfig:
        if self.high_freq_factor <= self.low_freq_factor:
            raise ValueError(
                f"high_freq_factor ({self.high_freq_factor}) must be greater than "
                f"low_freq_factor ({self.low_freq_factor})"
            )
        return self


RopeScalingConfig = Annotated[
    Union[LinearScalingConfig, DynamicScalingConfig, Llama3ScalingConfig],
    Field(discriminator="type"),
]


def _fraction_hint(head_dim: int, target: float) -> str:
    """Suggest the fraction giving the even rotary_dim closest to ``target``."""
    evens = range(2, head_dim + 1, 2)
    if not evens:
        return f" (head_dim {head_dim} has no even, positive number of dims to rotate)"
    best = min(evens, key=lambda r: (abs(r - target), -r))
    fraction = best / head_dim
    while int(head_dim * fraction) < best:  # guard against 0.999... from rounding
        fraction = math.nextafter(fraction, 2.0)
    return f"; e.g. fraction: {fraction!r} (rotary_dim {best})"


class RopeConfig(ComponentConfig):
    """Rotary position embeddings (RoPE, Su et al. 2021), optionally partial and scaled.

    Attributes:
        theta: base of the frequencies ``theta^(-2j/rotary_dim)`` (10000; Llama 3: 500000).
        fraction: share of each head that rotates, ``rotary_dim = int(head_dim * fraction)``
            (GPT-NeoX: 0.25); must give an even, positive ``rotary_dim``.
        interleaved: pair dims (0,1), (2,3), ... as GPT-J does, instead of the two halves
            (GPT-NeoX, Llama, Hugging Face).
        scaling: ``{type: linear, factor}``, ``{type: dynamic, factor}``,
            ``{type: llama3, factor, low_freq_factor, high_freq_factor,
            original_max_seq_len}``, or None.
    """

    theta: float = Field(10000.0, gt=0, description="frequency base (Llama 3: 500000)")
    fraction: float = Field(1.0, gt=0, le=1, description="share of head_dim that rotates")
    interleaved: bool = Field(False, description="GPT-J pairs (0,1),(2,3) instead of halves")
    scaling: RopeScalingConfig | None = Field(None, description="context-extension scaling")

    def check(self, dims: ModelDims) -> list[str]:
        """Problems of this config with ``dims.head_dim``: an odd or zero ``rotary_dim``."""
        head_dim, fraction = dims.head_dim, self.fraction
        rotary_dim = int(head_dim * fraction)
        if rotary_dim <= 0 or rotary_dim % 2:
            return [
                f"fraction: rotary_dim = int(head_dim * fraction) = int({head_dim} * {fraction:g})"
                f" = {rotary_dim} dims, which must be even and positive"
                f"{_fraction_hint(head_dim, head_dim * fraction)}"
            ]
        if isinstance(self.scaling, DynamicScalingConfig) and rotary_dim <= 2:
            return [
                f"scaling: dynamic NTK scaling needs rotary_dim > 2 (its exponent is "
                f"rotary_dim / (rotary_dim - 2)); got rotary_dim = int({head_dim} * "
                f"{fraction:g}) = 2: raise fraction"
            ]
        return []


class AlibiConfig(ComponentConfig):
    """Attention with Linear Biases: -slope · distance per head (Press et al. 2022)."""


class RelativeBiasConfig(ComponentConfig):
    """T5's learned, bucketed relative position bias (Raffel et al. 2020), one table per stack,
    or one per layer (UMT5, Chung et al. 2023).

    Attributes:
        num_buckets: rows of the table; half hold exact distances, half logarithmic ones
            (halved again per direction when the attention is bidirectional).
        max_distance: distance from which all positions share the last bucket.
        per_layer: one table for each layer of a stack instead of one for the stack.
    """

    num_buckets: int = Field(32, ge=4, description="buckets of the table (T5: 32)")
    max_distance: int = Field(128, ge=1, description="distance of the last bucket (T5: 128)")
    per_layer: bool = Field(
        False, description="one table per layer (UMT5) instead of one per stack (T5)"
    )

    @model_validator(mode="after")
    def _spans(self) -> RelativeBiasConfig:
        if self.max_distance <= self.num_buckets // 2:
            raise ValueError(
                f"max_distance ({self.max_distance}) must be greater than num_buckets // 2 "
                f"({self.num_buckets // 2}), the last exact distance"
            )
        return self


def _none(dims: ModelDims, config: NoPositionConfig) -> PositionalScheme:
    """No positional information: every hook is a no-op (NoPE)."""
    return PositionalScheme()


def _sinusoidal(dims: ModelDims, config: SinusoidalConfig) -> SinusoidalPositions:
    """Fixed sine/cosine embeddings added to the tokens (Vaswani et al. 2017)."""
    return SinusoidalPositions(
        dims.d_model, dims.max_seq_len, base=config.base, layout=config.layout
    )


def _learned(dims: ModelDims, config: LearnedConfig) -> LearnedPositions:
    """Learned absolute position embeddings of max_seq_len rows (GPT-2, BERT, BART)."""
    return LearnedPositions(dims.d_model, dims.max_seq_len, offset=config.offset)


def _rope_scaling(dims: ModelDims, config: RopeConfig) -> RopeScaling | None:
    s = config.scaling
    if isinstance(s, LinearScalingConfig):
        return LinearScaling(s.factor)
    if isinstance(s, DynamicScalingConfig):
        return DynamicNTKScaling(s.factor, dims.max_seq_len)
    if isinstance(s, Llama3ScalingConfig):
        return Llama3Scaling(
            s.factor, s.low_freq_factor, s.high_freq_factor, s.original_max_seq_len
        )
    return None


def _rope(dims: ModelDims, config: RopeConfig) -> RotaryPositions:
    """Rotary position embeddings (RoPE, Su et al. 2021), optionally partial and scaled.

    Raises:
        BuildError: ``rotary_dim = int(head_dim * fraction)`` is odd or zero, or is 2
            with dynamic scaling (:meth:`RopeConfig.check`).
    """
    problems = config.check(dims)
    if problems:
        raise BuildError(f"rope: {'; '.join(problems)}")
    return RotaryPositions(
        dims.head_dim,
        theta=config.theta,
        fraction=config.fraction,
        interleaved=config.interleaved,
        scaling=_rope_scaling(dims, config),
    )


def _alibi(dims: ModelDims, config: AlibiConfig) -> ALiBi:
    """Attention with Linear Biases: -slope · distance per head (Press et al. 2022)."""
    return ALiBi(dims.n_heads)


def _relative_bias(dims: ModelDims, config: RelativeBiasConfig) -> RelativePositionBias:
    """T5's learned, bucketed relative position bias, one table per stack (Raffel et al. 2020)
    or per layer (``dims.n_layers`` tables: UMT5)."""
    return RelativePositionBias(
        dims.n_heads,
        num_buckets=config.num_buckets,
        max_distance=config.max_distance,
        init_std=dims.d_model**-0.5,
        layers=dims.n_layers if config.per_layer else None,
    )


class RelativeBias2DConfig(ComponentConfig):
    """BEiT's learned 2-D relative position bias (Bao et al. 2022, §2.2): one bias per head for
    each (row, column) offset between patches, and three for the class token. vit only, with a
    class token and no registers, at the spec's image size."""

    per_layer: bool = Field(
        False,
        description="A table per layer (BEiT's use_relative_position_bias); false: one table "
        "shared by every layer (use_shared_relative_position_bias).",
    )


def _relative_bias_2d(dims: ModelDims, config: RelativeBias2DConfig) -> RelativePositionBias2D:
    """BEiT's 2-D relative position bias over the patch grid of a vit.

    Raises:
        BuildError: the model has no patch grid (not a vit).
    """
    if dims.grid is None:
        raise BuildError("position: relative_bias_2d needs a patch grid (arch: vit)")
    return RelativePositionBias2D(dims.n_heads, dims.grid,
                                  layers=dims.n_layers if config.per_layer else None)


def register(registry: Registry) -> None:
    """Register the built-in positional schemes under kind ``position``."""
    registry.add("position", "none", _none, NoPositionConfig)
    registry.add("position", "sinusoidal", _sinusoidal, SinusoidalConfig)
    registry.add("position", "learned", _learned, LearnedConfig)
    registry.add("position", "rope", _rope, RopeConfig)
    registry.add("position", "alibi", _alibi, AlibiConfig)
    registry.add("position", "relative_bias", _relative_bias, RelativeBiasConfig)
    registry.add("position", "relative_bias_2d", _relative_bias_2d, RelativeBias2DConfig)
