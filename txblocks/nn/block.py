"""The Transformer block: attention (and cross-attention) and ffn around the residual stream."""

from __future__ import annotations

import inspect
from typing import Literal

import torch
from torch import Tensor, nn

from txblocks.attention.mask import AttentionMask
from txblocks.nn.attention import Attention, Rotate
from txblocks.nn.cache import CrossCache, LayerCache

Layout = Literal["pre_norm", "post_norm", "parallel"]


def split_aux(result: Tensor | tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor | None]:
    """An ffn returns ``out`` or ``(out, aux_loss)``; normalize to the pair."""
    if isinstance(result, tuple):
        return result[0], result[1]
    return result, None


class TransformerBlock(nn.Module):
    """Attention, optional cross-attention, then ffn, each a residual branch, by ``layout``.

    * ``pre_norm`` (GPT-2, Llama, T5): x + f(norm(x)).
    * ``post_norm`` (Vaswani et al. 2017, BERT, BART): norm(x + f(x)).
    * ``parallel`` (GPT-J, GPT-NeoX): x + attn(norm1(x)) + ffn(norm2(x)).

    Args:
        attention: the self-attention layer.
        ffn: a module (B, T, C) -> (B, T, C) or ((B, T, C), aux_loss).
        norm1, norm2: norms around attention and ffn.
        layout: one of the three above.
        dropout: residual dropout on each branch output.
        cross_attention, norm_cross: decoder blocks of encoder–decoder models attend
            to the encoder output between self-attention and ffn.
    """

    def __init__(self, attention: Attention, ffn: nn.Module, norm1: nn.Module, norm2: nn.Module,
                 *, layout: Layout = "pre_norm", dropout: float = 0.0,
                 cross_attention: Attention | None = None, norm_cross: nn.Module | None = None) -> None:
        super().__init__()
        if layout not in ("pre_norm", "post_norm", "parallel"):
            raise ValueError(f"unknown layout {layout!r}; allowed: pre_norm, post_norm, parallel")
        if (cross_attention is None) != (norm_cross is None):
            raise ValueError("cross_attention and norm_cross go together")
        if cross_attention is not None and layout == "parallel":
            raise ValueError("the parallel layout has no place for cross-attention")
        self.attention, self.ffn = attention, ffn
        # An ffn that routes tokens (MoE) may take the padding mask to leave pads out of its losses.
        self.ffn_takes_mask = "token_mask" in inspect.signature(ffn.forward).parameters
        self.norm1, self.norm2 = norm1, norm2
        self.cross_attention, self.norm_cross = cross_attention, norm_cross
        self.layout = layout
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        mask: AttentionMask,
        rotate: Rotate | None = None,
        context: Tensor | None = None,
        context_mask: AttentionMask | None = None,
        cache: LayerCache | None = None,
        cross_cache: CrossCache | None = None,
        token_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """(B, T, C) -> (B, T, C) and the ffn's auxiliary loss (or None).

        ``context`` (B, S, C) and ``context_mask`` feed the cross-attention; ``cache`` and
        ``cross_cache`` carry keys and values between decoding steps; ``token_mask`` (B, T)
        marks real tokens for an ffn that accepts it.
        """
        drop = self.dropout

        def run_ffn(h: Tensor) -> tuple[Tensor, Tensor | None]:
            if self.ffn_takes_mask and token_mask is not None:
                return split_aux(self.ffn(h, token_mask=token_mask))
            return split_aux(self.ffn(h))

        if self.layout == "parallel":
            out, aux = run_ffn(self.norm2(x))
            return x + drop(self.attention(self.norm1(x), mask, rotate, cache=cache)) + drop(out), aux
        pre = self.layout == "pre_norm"
        steps = [(self.norm1, lambda h: self.attention(h, mask, rotate, cache=cache))]
        if self.cross_attention is not None and self.norm_cross is not None:
            if context is None or context_mask is None:
                raise ValueError("this block cross-attends: pass context and context_mask")
            cross = self.cross_attention
            steps.append(
                (self.norm_cross, lambda h: cross(h, context_mask, context=context, cache=cross_cache))
            )
        aux: Tensor | None = None

        def ffn(h: Tensor) -> Tensor:
            nonlocal aux
            out, aux = run_ffn(h)
            return out

        steps.append((self.norm2, ffn))
        for norm, f in steps:
            x = x + drop(f(norm(x))) if pre else norm(x + drop(f(x)))
        return x, aux


def sum_aux(losses: list[Tensor | None], like: Tensor) -> Tensor | None:
    """The sum of the blocks' auxiliary losses, or None when no block has one."""
    present = [loss for loss in losses if loss is not None]
    if not present:
        return None
    return torch.stack([loss.to(like.dtype) for loss in present]).sum()
