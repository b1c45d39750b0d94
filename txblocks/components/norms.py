"""Built-in norms: ``layernorm`` and ``rmsnorm``."""

from __future__ import annotations

from pydantic import Field
from torch import nn

from txblocks.nn.norms import RMSNorm
from txblocks.registry import ComponentConfig, Registry


class LayerNormConfig(ComponentConfig):
    """Layer normalization (Ba et al. 2016), bias optional."""

    eps: float = Field(1e-5, gt=0)
    bias: bool = True


class RMSNormConfig(ComponentConfig):
    """RMS normalization (Zhang & Sennrich 2019), no mean-centering."""

    eps: float = Field(1e-6, gt=0)


def layernorm(dim: int, config: LayerNormConfig) -> nn.LayerNorm:
    """Layer normalization over the last dimension."""
    return nn.LayerNorm(dim, eps=config.eps, bias=config.bias)


def rmsnorm(dim: int, config: RMSNormConfig) -> RMSNorm:
    """RMS normalization over the last dimension."""
    return RMSNorm(dim, eps=config.eps)


def register(registry: Registry) -> None:
    """Register the built-in norms."""
    registry.add("norm", "layernorm", layernorm, LayerNormConfig)
    registry.add("norm", "rmsnorm", rmsnorm, RMSNormConfig)
