"""LayerScale (Touvron et al. 2021, "Going deeper with Image Transformers", §2.1)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["LayerScale"]


class LayerScale(nn.Module):
    """A residual branch's output times a learned per-channel vector: (B, T, C) -> (B, T, C).

    Args:
        dim: C.
        init: the vector's initial value (CaiT: 1e-5 to 0.1; BEiT: 0.1).
    """

    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.init = init
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def reset_parameters(self) -> None:
        nn.init.constant_(self.gamma, self.init)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma
