"""The Transformer block: attention (and cross-attention) and ffn around the residual stream."""

from __future__ import annotations

import inspect
from typing import Literal, cast

import torch
from torch import Tensor, nn

from txblocks.attention.mask import AttentionMask
from txblocks.nn.attention import Attention, Rotate, ScoreTerm
from txblocks.nn.cache import CrossCache, LayerCache

Layout = Literal["pre_norm", "post_norm", "parallel", "reordered_norm"]
LAYOUTS = ("pre_norm", "post_norm", "parallel", "reordered_norm")


def split_aux(result: Tensor | tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor | None]:
    """An ffn returns ``out`` or ``(out, aux_loss)``; normalize to the pair."""
    if isinstance(result, tuple):
        return result[0], result[1]
    return result, None


class TransformerBlock(nn.Module):
    """Attention, optional cross-attention, then ffn, each a residual branch, by ``layout``.

    * ``pre_norm`` (GPT-2, Llama, T5): x + f(norm(x)).
    * ``post_norm`` (Vaswani et al. 2017, BERT, BART): norm(x + f(x)).
    * ``parallel`` (GPT-J, GPT-NeoX): x + attn(norm1(x)) + ffn(norm2(x)); without ``norm2``
      one norm feeds both branches, x + attn(h) + ffn(h) with h = norm1(x) (GPT-J, Phi,
      Falcon-7B).
    * ``reordered_norm`` (OLMo 2; Team OLMo 2024, "2 OLMo 2 Furious"): x + norm(f(x)), the
      norms on the branch outputs only.

    ``post_attention_norm`` / ``post_ffn_norm`` norm a branch's output before the residual
    add, x + post(f(norm(x))) in ``pre_norm`` (Gemma 2's sandwich norms; Gemma Team 2024,
    "Gemma 2: Improving Open Language Models at a Practical Size"); cross-attention has none.

    Args:
        attention: the self-attention layer.
        ffn: a module (B, T, C) -> (B, T, C) or ((B, T, C), aux_loss).
        norm1, norm2: norms around attention and ffn; ``norm2`` None: the ``parallel``
            layout's one shared norm.
        layout: one of the four above.
        dropout: residual dropout on each branch output.
        cross_attention, norm_cross: decoder blocks of encoder–decoder models attend
            to the encoder output between self-attention and ffn.
        post_attention_norm, post_ffn_norm: norms of the attention and ffn outputs, or None.
        attention_scale, ffn_scale: modules applied to the self-attention and ffn outputs
            right after them (before a post norm, if any; LayerScale, Touvron et al. 2021:
            BEiT, CaiT), or None.
    """

    def __init__(self, attention: Attention, ffn: nn.Module, norm1: nn.Module,
                 norm2: nn.Module | None, *, layout: Layout = "pre_norm", dropout: float = 0.0,
                 cross_attention: Attention | None = None, norm_cross: nn.Module | None = None,
                 post_attention_norm: nn.Module | None = None,
                 post_ffn_norm: nn.Module | None = None,
                 attention_scale: nn.Module | None = None,
                 ffn_scale: nn.Module | None = None) -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; allowed: {', '.join(LAYOUTS)}")
        if (cross_attention is None) != (norm_cross is None):
            raise ValueError("cross_attention and norm_cross go together")
        if cross_attention is not None and layout == "parallel":
            raise ValueError("the parallel layout has no place for cross-attention")
        if norm2 is None and layout != "parallel":
            raise ValueError(f"norm2 is None (one shared norm), which only the parallel layout "
                             f"has; layout is {layout!r}")
        if layout == "reordered_norm" and (post_attention_norm is not None
                                        or post_ffn_norm is not None):
            raise ValueError("the reordered_norm layout norms each branch output already: "
                             "give it no post_attention_norm / post_ffn_norm")
        self.attention, self.ffn = attention, ffn
        # An ffn that routes tokens (MoE) may take the padding mask to leave pads out of its losses.
        self.ffn_takes_mask = "token_mask" in inspect.signature(ffn.forward).parameters
        self.norm1, self.norm2 = norm1, norm2
        self.cross_attention, self.norm_cross = cross_attention, norm_cross
        self.post_attention_norm, self.post_ffn_norm = post_attention_norm, post_ffn_norm
        self.attention_scale, self.ffn_scale = attention_scale, ffn_scale
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
        *,
        score: ScoreTerm | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """(B, T, C) -> (B, T, C) and the ffn's auxiliary loss (or None).

        ``context`` (B, S, C) and ``context_mask`` feed the cross-attention; ``cache`` and
        ``cross_cache`` carry keys and values between decoding steps; ``token_mask`` (B, T)
        marks real tokens for an ffn that accepts it; ``score`` is this layer's score term
        from the positional scheme, for the self-attention.
        """
        drop = self.dropout

        def run_ffn(h: Tensor) -> tuple[Tensor, Tensor | None]:
            if self.ffn_takes_mask and token_mask is not None:
                return split_aux(self.ffn(h, token_mask=token_mask))
            return split_aux(self.ffn(h))

        def post(norm: nn.Module | None, h: Tensor) -> Tensor:
            return h if norm is None else norm(h)

        def attend(h: Tensor) -> Tensor:
            return post(self.attention_scale,
                        self.attention(h, mask, rotate, cache=cache, score=score))

        if self.layout == "parallel":
            h = self.norm1(x)
            out, aux = run_ffn(h if self.norm2 is None else self.norm2(x))
            return x + drop(post(self.post_attention_norm, attend(h))) \
                + drop(post(self.post_ffn_norm, post(self.ffn_scale, out))), aux
        steps = [(self.norm1, attend, self.post_attention_norm)]
        if self.cross_attention is not None and self.norm_cross is not None:
            if context is None or context_mask is None:
                raise ValueError("this block cross-attends: pass context and context_mask")
            cross = self.cross_attention
            steps.append((self.norm_cross,
                          lambda h: cross(h, context_mask, context=context, cache=cross_cache), None))
        aux: Tensor | None = None

        def ffn(h: Tensor) -> Tensor:
            nonlocal aux
            out, aux = run_ffn(h)
            return post(self.ffn_scale, out)

        norm2 = cast(nn.Module, self.norm2)  # None in the parallel layout only (see __init__)
        steps.append((norm2, ffn, self.post_ffn_norm))
        for norm, f, after in steps:
            if self.layout == "pre_norm":
                x = x + drop(post(after, f(norm(x))))
            elif self.layout == "post_norm":
                x = norm(x + drop(post(after, f(x))))
            else:  # reordered_norm
                x = x + drop(norm(f(x)))
        return x, aux


def sum_aux(losses: list[Tensor | None], like: Tensor) -> Tensor | None:
    """The sum of the blocks' auxiliary losses, or None when no block has one."""
    present = [loss for loss in losses if loss is not None]
    if not present:
        return None
    return torch.stack([loss.to(like.dtype) for loss in present]).sum()
