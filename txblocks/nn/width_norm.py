"""A norm over all heads of q or k at once (OLMo 2's q/k norms)."""

from __future__ import annotations

from torch import Tensor, nn


class WidthNorm(nn.Module):
    """Applies ``norm`` to the concatenated heads of a (B, T, H, D) tensor, over H·D.

    :class:`~txblocks.nn.attention.Attention` norms q and k per head, after the split into
    heads; OLMo 2 (Team OLMo 2024, "2 OLMo 2 Furious") norms the whole projection before the
    split, ``q_norm(q_proj(x))`` with a weight of n_heads·head_dim. Given as ``q_norm`` /
    ``k_norm``, this module does the same: flatten the heads, norm, split again.

    Shapes: (B, T, H, D) -> (B, T, H, D).

    Args:
        norm: a norm of width H·D (n_heads·head_dim for q, n_kv_heads·head_dim for k).
    """

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.flatten(-2)).unflatten(-1, x.shape[-2:])  # b t h d -> b t (h d) -> back
