"""Eager attention: the plain-math reference that every other kernel is tested against.

Shapes: B batch, Tq/Tk query/key length, H query heads, Hkv kv heads, D head_dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from txblocks.attention.kernel import AttentionCall, AttentionKernel
from txblocks.attention.mask import AttentionMask

__all__ = ["EagerKernel"]


class EagerKernel(AttentionKernel):
    """Plain-math attention: explicit matmul and softmax (any device, any float dtype).

    ``softmax(q kᵀ · scale + mask) v`` from Vaswani et al. 2017, "Attention Is All
    You Need", eq. 1; optional logit soft-capping ``c · tanh(s / c)`` (Gemma 2,
    Gemma Team 2024); grouped K/V heads by repeating each kv head H/Hkv times
    (GQA, Ainslie et al. 2023). Scores and softmax run in float32. Masked scores
    get ``finfo(float32).min`` (finite), and rows with no allowed key are zeroed,
    so their gradients stay finite.
    """

    name = "eager"
    priority = 0

    def cost_rank(self, call: AttentionCall) -> int:
        return 100  # the reference: every other kernel first

    def attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: AttentionMask,
        *,
        scale: float,
        dropout: float,
        softcap: float | None,
    ) -> Tensor:
        groups = q.shape[2] // k.shape[2]
        q = rearrange(q, "b t h d -> b h t d")
        k = rearrange(k, "b t h d -> b h t d").repeat_interleave(groups, dim=1)
        v = rearrange(v, "b t h d -> b h t d").repeat_interleave(groups, dim=1)

        scores = (q @ k.transpose(-1, -2)).float() * scale  # (B, H, Tq, Tk)
        if softcap is not None:
            scores = softcap * torch.tanh(scores / softcap)
        additive = mask.additive(torch.float32, q.device)  # (B|1, H|1, Tq, Tk)
        if additive is not None:
            scores = scores + additive
        probs = scores.softmax(dim=-1)
        if dropout > 0.0:
            probs = F.dropout(probs, p=dropout, training=True)
        out = probs.to(v.dtype) @ v  # (B, H, Tq, D)

        empty = mask.empty_rows(q.device)  # (B|1, 1, Tq, 1)
        if empty is not None:
            out = out.masked_fill(empty, 0.0)
        return rearrange(out, "b h t d -> b t h d")
