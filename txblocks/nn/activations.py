"""Activations that torch does not ship as modules."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class QuickGELU(nn.Module):
    """x · sigmoid(1.702 x), the GELU approximation used by CLIP and GPT-2's ancestors."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)
