"""The Transformer block: attention and ffn around the residual stream."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from txblocks.attention.mask import AttentionMask
from txblocks.nn.attention import Attention, Rotate

Layout = Literal["pre_norm", "post_norm", "parallel"]


def split_aux(result: Tensor | tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor | None]:
    """An ffn returns ``out`` or ``(out, aux_loss)``; normalize to the pair."""
    if isinstance(result, tuple):
        return result[0], result[1]
    return result, None


class TransformerBlock(nn.Module):
    """Attention then ffn, each a residual branch, arranged by ``layout``.

    * ``pre_norm`` (GPT-2, Llama): x + f(norm(x)).
    * ``post_norm`` (Vaswani et al. 2017, BERT): norm(x + f(x)).
    * ``parallel`` (GPT-J, GPT-NeoX): x + attn(norm1(x)) + ffn(norm2(x)).

    Args:
        attention: the attention layer.
        ffn: a module (B, T, C) -> (B, T, C) or ((B, T, C), aux_loss).
        norm1, norm2: norms around attention and ffn.
        layout: one of the three above.
        dropout: residual dropout on each branch output.
    """

    def __init__(self, attention: Attention, ffn: nn.Module, norm1: nn.Module, norm2: nn.Module,
                 *, layout: Layout = "pre_norm", dropout: float = 0.0) -> None:
        super().__init__()
        if layout not in ("pre_norm", "post_norm", "parallel"):
            raise ValueError(f"unknown layout {layout!r}; allowed: pre_norm, post_norm, parallel")
        self.attention, self.ffn = attention, ffn
        self.norm1, self.norm2 = norm1, norm2
        self.layout = layout
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: Tensor, mask: AttentionMask, rotate: Rotate | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """(B, T, C) -> (B, T, C) and the ffn's auxiliary loss (or None)."""
        drop = self.dropout
        if self.layout == "pre_norm":
            x = x + drop(self.attention(self.norm1(x), mask, rotate))
            out, aux = split_aux(self.ffn(self.norm2(x)))
            return x + drop(out), aux
        if self.layout == "post_norm":
            x = self.norm1(x + drop(self.attention(x, mask, rotate)))
            out, aux = split_aux(self.ffn(x))
            return self.norm2(x + drop(out)), aux
        out, aux = split_aux(self.ffn(self.norm2(x)))
        return x + drop(self.attention(self.norm1(x), mask, rotate)) + drop(out), aux


def sum_aux(losses: list[Tensor | None], like: Tensor) -> Tensor | None:
    """The sum of the blocks' auxiliary losses, or None when no block has one."""
    present = [loss for loss in losses if loss is not None]
    if not present:
        return None
    return torch.stack([loss.to(like.dtype) for loss in present]).sum()
