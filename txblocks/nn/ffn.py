"""Dense feed-forward networks. Shapes: B batch, T time, C d_model, F hidden."""

from __future__ import annotations

from torch import Tensor, nn


class MLP(nn.Module):
    """Two linear layers with an activation between: ``down(act(up(x)))``."""

    def __init__(self, dim: int, hidden: int, activation: nn.Module, *, bias: bool = True,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.up = nn.Linear(dim, hidden, bias=bias)
        self.act = activation
        self.dropout = nn.Dropout(dropout)
        self.down = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, C) -> (B, T, C)
        return self.down(self.dropout(self.act(self.up(x))))


class GLU(nn.Module):
    """Gated linear unit FFN (Shazeer 2020): ``down(act(gate(x)) * up(x))``.

    SwiGLU with silu, GeGLU with gelu, ReGLU with relu. ``gate_up`` holds the gate
    rows then the up rows, so one matrix product computes both.
    """

    def __init__(self, dim: int, hidden: int, activation: nn.Module, *, bias: bool = False,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.hidden = hidden
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=bias)
        self.act = activation
        self.dropout = nn.Dropout(dropout)
        self.down = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, C) -> (B, T, C)
        gate, up = self.gate_up(x).split(self.hidden, dim=-1)  # (B, T, F) each
        return self.down(self.dropout(self.act(gate) * up))
