"""PyTorch ``scaled_dot_product_attention``: the kernel off CUDA (and on CUDA without xformers).

Shapes: B batch, Tq/Tk query/key length, H query heads, Hkv kv heads, D head_dim.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from txblocks.attention.kernel import SHORT_QUERY, AttentionCall, AttentionKernel
from txblocks.attention.mask import AttentionMask

__all__ = ["SDPAKernel"]


class SDPAKernel(AttentionKernel):
    """PyTorch's fused ``scaled_dot_product_attention`` (any device; no softcap).

    Grouped K/V heads go through ``enable_gqa=True``; the mask becomes
    ``is_causal`` when that is exact, else the mask's finite additive tensor.
    Rows with no allowed key are zeroed afterwards.
    See ``torch.nn.functional.scaled_dot_product_attention`` in the PyTorch docs.
    """

    name = "sdpa"
    priority = 50

    def cost_rank(self, call: AttentionCall) -> int:
        """10 for no mask, an exact causal mask or a decoding step (its fused kernels, the
        least Python per call); 30 when it needs a dense mask tensor."""
        return 10 if call.q_len <= SHORT_QUERY or not call.mask.sdpa_needs_tensor() else 30

    def why_not(self, call: AttentionCall) -> list[str]:
        reasons = super().why_not(call)
        if call.softcap is not None:
            reasons.append(
                "softcap (logit soft-capping) is not supported by torch SDPA; "
                "use kernel 'eager' (or 'auto', which picks it)"
            )
        if not call.dtype.is_floating_point:
            reasons.append(f"dtype {call.dtype} is not a floating-point type")
        return reasons

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
        attn_mask, is_causal = mask.sdpa(q.dtype, q.device)  # (B|1, H|1, Tq, Tk) or None
        # transposes, not einops: this runs in every layer of every decoding step
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2),  # b t h d -> b h t d
            k.transpose(1, 2),
            v.transpose(1, 2),
            attn_mask=attn_mask,
            dropout_p=dropout,
            is_causal=is_causal,
            scale=scale,
            enable_gqa=q.shape[2] != k.shape[2],
        ).transpose(1, 2)  # b h t d -> b t h d
        empty = mask.empty_rows(q.device)  # (B|1, 1, Tq, 1)
        if empty is not None:
            # zeroed in the (B, Tq, H, D) view: the gradient then reaches SDPA with the strides
            # of its output. Filled in the (B, H, Tq, D) view, the gradient came back
            # contiguous there, and cuDNN's backward on an H200 (torch 2.11) gave wrong
            # gradients for it (issue 12: prefix_lm, fp16, grad q off by up to 3.8)
            out = out.masked_fill(empty.transpose(1, 2), 0.0)
        return out
