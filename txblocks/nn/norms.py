"""Normalization modules."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019): x / rms(x) · weight, no mean-centering.

    ``rms(x) = sqrt(mean(x²) + eps)`` over the last dimension, computed in float32; then, as
    Llama and T5 do, cast back to the input's dtype and multiplied by ``weight``.

    With ``unit_offset`` the scale is ``(1 + weight)``, ``weight`` initialised to 0, and the
    product is taken in float32 before the cast, as Gemma does (Gemma Team 2024;
    ``GemmaRMSNorm`` in transformers, huggingface/transformers#29402). ``weight`` holds the
    checkpoint's values as they are: no 1 is added to them when loading.

    Shapes: (..., C) -> (..., C).

    Args:
        dim: the width C.
        eps: added to the mean square.
        unit_offset: scale by ``1 + weight`` (Gemma) instead of ``weight``.
    """

    def __init__(self, dim: int, eps: float = 1e-6, *, unit_offset: bool = False) -> None:
        super().__init__()
        self.eps = eps
        self.unit_offset = unit_offset
        self.weight = nn.Parameter(torch.empty(dim))
        self.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        y = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        if self.unit_offset:
            return (y * (1.0 + self.weight.float())).to(x.dtype)
        return self.weight * y.to(x.dtype)

    def reset_parameters(self) -> None:
        """A scale of 1: ``weight`` 1, or 0 with ``unit_offset``."""
        if self.unit_offset:
            nn.init.zeros_(self.weight)
        else:
            nn.init.ones_(self.weight)

    def extra_repr(self) -> str:
        offset = ", unit_offset=True" if self.unit_offset else ""
        return f"{self.weight.shape[0]}, eps={self.eps}{offset}"
