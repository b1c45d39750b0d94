"""Built-in norms: ``layernorm`` and ``rmsnorm``."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator
from torch import nn

from txblocks.nn.norms import RMSNorm
from txblocks.registry import ComponentConfig, Registry


class LayerNormConfig(ComponentConfig):
    """Layer normalization (Ba et al. 2016): ``(x - mean) / sqrt(var + eps) · weight + bias``.

    ``affine: false`` keeps no parameters at all: ``(x - mean) / sqrt(var + eps)``, OLMo's
    non-parametric layer norm (Groeneveld et al. 2024, "OLMo: Accelerating the Science of
    Language Models", §2.1). ``bias`` then defaults to false; ``bias: true`` is an error.
    """

    eps: float = Field(1e-5, gt=0, description="Added to the variance before the square root.")
    bias: bool = Field(True, description="A learned bias after the scale (needs affine).")
    affine: bool = Field(
        True,
        description="Learned weight (and bias); false: no parameters at all, as OLMo's "
        "non-parametric LayerNorm (Groeneveld et al. 2024).",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_bias_without_affine(cls, data: Any) -> Any:
        # `{affine: false}` alone means no parameters at all: bias follows unless given.
        if isinstance(data, dict) and data.get("affine") is False and "bias" not in data:
            return {**data, "bias": False}
        return data

    @model_validator(mode="after")
    def _bias_needs_affine(self) -> LayerNormConfig:
        if self.bias and not self.affine:
            raise ValueError(
                "bias: true needs affine: true (a LayerNorm without affine parameters has no "
                "bias); set bias: false or affine: true"
            )
        return self


class RMSNormConfig(ComponentConfig):
    """RMS normalization (Zhang & Sennrich 2019), no mean-centering: ``x / rms(x) · w``.

    ``unit_offset: true`` scales by ``(1 + w)`` instead, with ``w`` stored (and initialised
    to 0) as Gemma stores it (Gemma Team 2024; ``RMSNorm(add_unit_offset=True)`` in
    google-deepmind/gemma_pytorch, ``GemmaRMSNorm`` in transformers).
    """

    eps: float = Field(1e-6, gt=0, description="Added to the mean square before the root.")
    unit_offset: bool = Field(
        False,
        description="Scale by (1 + weight), the weight initialised to 0, as Gemma does "
        "(Gemma Team 2024); the product is taken in float32 and cast back.",
    )


def layernorm(dim: int, config: LayerNormConfig) -> nn.LayerNorm:
    """Layer normalization over the last dimension (no parameters when not ``affine``)."""
    return nn.LayerNorm(
        dim, eps=config.eps, elementwise_affine=config.affine, bias=config.bias and config.affine
    )


def rmsnorm(dim: int, config: RMSNormConfig) -> RMSNorm:
    """RMS normalization over the last dimension."""
    return RMSNorm(dim, eps=config.eps, unit_offset=config.unit_offset)


def register(registry: Registry) -> None:
    """Register the built-in norms."""
    registry.add("norm", "layernorm", layernorm, LayerNormConfig)
    registry.add("norm", "rmsnorm", rmsnorm, RMSNormConfig)
