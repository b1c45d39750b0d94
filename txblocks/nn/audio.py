"""Whisper's convolutional audio front end (Radford et al. 2022, "Robust Speech Recognition
via Large-Scale Weak Supervision", §2.2).

Shapes: B batch, M mel bins, F frames, D d_model.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["AudioConv"]


class AudioConv(nn.Module):
    """Log-mel features (B, M, F) -> (B, F / 2, D): two 1-D convolutions of width 3, each
    followed by GELU, the second of stride 2. The positions are added by the stack after it.

    Args:
        mels: M, the mel bins of the features.
        dim: D.
    """

    def __init__(self, mels: int, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(mels, dim, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(dim, dim, kernel_size=3, stride=2, padding=1)

    def forward(self, input_features: Tensor) -> Tensor:
        if input_features.dim() != 3 or input_features.shape[1] != self.conv1.in_channels:
            raise ValueError(
                f"input_features must be (batch, {self.conv1.in_channels} mel bins, frames), "
                f"got {tuple(input_features.shape)}"
            )
        x = F.gelu(self.conv1(input_features.to(self.conv1.weight.dtype)))  # (B, D, F)
        x = F.gelu(self.conv2(x))  # (B, D, F / 2)
        return x.transpose(1, 2)  # (B, F / 2, D)
