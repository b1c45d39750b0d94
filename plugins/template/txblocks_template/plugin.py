"""txblocks-template: ScaleNorm for txblocks, registered as the norm ``scalenorm``.

Nguyen & Salazar 2019, "Transformers without Tears: Improving the Normalization of
Self-Attention", section 2.2: ``ScaleNorm(x) = g * x / ||x||`` with one learned scalar
``g``, initialised to ``sqrt(d)``.
"""

from __future__ import annotations

import math

import torch
import txblocks
from pydantic import Field
from torch import Tensor, nn


class ScaleNormConfig(txblocks.ComponentConfig):
    """ScaleNorm (Nguyen & Salazar 2019): g * x / ||x||, one learned scalar g."""

    eps: float = Field(1e-5, gt=0, description="floor of ||x||, so that a zero vector stays finite")


class ScaleNorm(nn.Module):
    """``g * x / max(||x||, eps)`` over the last dimension; ``g`` starts at ``sqrt(dim)``.

    Args:
        dim: width of the normalized vectors (d_model).
        config: the validated parameters.
    """

    def __init__(self, dim: int, config: ScaleNormConfig) -> None:
        super().__init__()
        self.eps = config.eps
        self.g = nn.Parameter(torch.tensor(math.sqrt(dim)))

    def forward(self, x: Tensor) -> Tensor:  # (..., dim) -> (..., dim)
        return self.g * x / x.norm(dim=-1, keepdim=True).clamp_min(self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


@txblocks.hookimpl
def txblocks_register(registry: txblocks.Registry) -> None:
    """Add this plugin's components; txblocks calls it once per registry it builds."""
    registry.add("norm", "scalenorm", ScaleNorm, ScaleNormConfig)
