"""The txblocks plugin: attention kernels ``linear`` and ``performer``.

Registered through the ``txblocks`` entry point of the ``txblocks-linear`` distribution.
"""

from __future__ import annotations

from pydantic import Field

import txblocks
from txblocks_linear.kernels import LinearKernel, PerformerKernel

__all__ = ["LinearConfig", "PerformerConfig", "txblocks_register"]


class LinearConfig(txblocks.ComponentConfig):
    """Linear attention, feature map elu(x) + 1 (Katharopoulos et al. 2020)."""

    chunk: int = Field(64, ge=1, description="queries per chunk of the causal prefix sums")


class PerformerConfig(txblocks.ComponentConfig):
    """Performer FAVOR+: softmax estimated by positive orthogonal random features."""

    n_features: int = Field(256, ge=1, description="random features per head (M)")
    redraw: bool = Field(True, description="draw new features at every training forward")
    seed: int = Field(0, ge=0, description="seed of the random projections")
    chunk: int = Field(64, ge=1, description="queries per chunk of the causal prefix sums")


def linear(config: LinearConfig) -> LinearKernel:
    """Linear attention (elu + 1 features), O(T): unmasked or causal, with key padding."""
    return LinearKernel(config.chunk)


def performer(config: PerformerConfig) -> PerformerKernel:
    """Performer FAVOR+ attention, O(T): unmasked or causal, with key padding."""
    return PerformerKernel(config.n_features, redraw=config.redraw, seed=config.seed,
                           chunk=config.chunk)


@txblocks.hookimpl
def txblocks_register(registry: txblocks.Registry) -> None:
    """Register attention kernels ``linear`` and ``performer``."""
    registry.add("attention", "linear", linear, LinearConfig)
    registry.add("attention", "performer", performer, PerformerConfig)
