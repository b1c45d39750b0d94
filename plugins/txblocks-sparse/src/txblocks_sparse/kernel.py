"""``block_sparse``: attention computed only over the active blocks of a block-sparse mask.

The blocked computation of Longformer (Beltagy et al. 2020, §3.2, their "sliding
chunks") and BigBird (Zaheer et al. 2020, appendix D, "blockified" attention): for every
block of b queries, gather the K key blocks that the mask's :class:`BlockLayout`
names (one batched gather for all query blocks), score the ``b × K·b`` pairs, apply the
mask element-wise inside them and softmax. Query blocks holding a global query are
computed against every key. Time ``O(T·K·b·D)``, memory ``O(T·K·b)``: linear in T for
a fixed pattern, instead of ``O(T²)``.

Same numbers as ``eager`` (scores and softmax in float32, masked scores at
``finfo.min``, rows with no allowed key output 0 with finite gradients), for key
padding, grouped K/V heads, an additive bias (gathered at the active pairs),
soft-capping and dropout.

Shapes: B batch, Tq/Tk query/key length, H query heads, Hkv kv heads (G = H / Hkv),
D head_dim, b block size, N query blocks, S = K·b gathered keys per query block.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from txblocks.attention.kernel import AttentionCall, AttentionKernel
from txblocks.attention.mask import AttentionMask
from txblocks_sparse.layout import BlockLayout, first_true, lookup, supports_blocks

__all__ = ["BlockSparseKernel", "block_sparse_attention"]

#: Scores computed at once (floats): about 16 MB, so that a slab of query blocks stays in
#: cache. Only the speed depends on it.
SLAB_SCORES = 1 << 22


class BlockSparseKernel(AttentionKernel):
    """Attention over the active blocks of a block-sparse mask (longformer, bigbird).

    Priority -10: below every built-in, so ``auto`` never prefers it.
    """

    name = "block_sparse"
    priority = -10

    def why_not(self, call: AttentionCall) -> list[str]:
        reasons = super().why_not(call)
        if not supports_blocks(call.mask):
            reasons.append(
                f"mask {type(call.mask).__name__} exposes no block structure "
                "(block_layout/keep_at); block_sparse runs block-sparse masks such as "
                "'longformer' and 'bigbird' (txblocks-sparse)"
            )
        if not call.dtype.is_floating_point:
            reasons.append(f"dtype {call.dtype} is not a floating-point type")
        return reasons

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask, *, scale: float,
               dropout: float, softcap: float | None) -> Tensor:
        layout = mask.block_layout(q.device)  # type: ignore[attr-defined]
        return block_sparse_attention(q, k, v, mask, layout, scale=scale, dropout=dropout,
                                      softcap=softcap)


def block_sparse_attention(q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask,
                           layout: BlockLayout, *, scale: float, dropout: float = 0.0,
                           softcap: float | None = None) -> Tensor:
    """``softmax(q kᵀ·scale + mask) v`` over the blocks of ``layout``: q (B, Tq, H, D) -> same.

    ``mask`` must provide ``keep_at(q_pos, k_pos)``; ``layout`` must cover every
    allowed pair (it comes from ``mask.block_layout``).
    """
    batch, tq, h, _ = q.shape
    tk, hkv = k.shape[1], k.shape[2]
    b, n_q, n_k = layout.block, layout.n_query_blocks, layout.n_key_blocks
    device = q.device
    lead = mask.q_offset - layout.first * b  # padded queries in front of query 0
    q_pos = (layout.first * b + torch.arange(n_q * b, device=device)).view(n_q, b)

    qx = F.pad(q, (0, 0, 0, 0, lead, n_q * b - lead - tq))
    qx = rearrange(qx, "b (n c) (h g) d -> b n c h g d", c=b, h=hkv)
    kx = rearrange(F.pad(k, (0, 0, 0, 0, 0, n_k * b - tk)), "b (n c) h d -> b n c h d", c=b)
    vx = rearrange(F.pad(v, (0, 0, 0, 0, 0, n_k * b - tk)), "b (n c) h d -> b n c h d", c=b)

    # the active key blocks of each query block, gathered for a slab of query blocks at
    # a time (one batched gather each; slabs keep the scores in cache): (B, N, S, Hkv, D)
    index, valid = layout.index.expand(batch, -1, -1), layout.valid.expand(batch, -1, -1)
    rows = torch.arange(batch, device=device)[:, None, None]
    slab = max(1, SLAB_SCORES // (batch * h * b * b * max(layout.slots, 1)))
    outs = []
    for start in range(0, n_q, slab):
        part = slice(start, start + slab)
        idx = index[:, part]
        kg = rearrange(kx[rows, idx], "b n s c h d -> b n (s c) h d")
        vg = rearrange(vx[rows, idx], "b n s c h d -> b n (s c) h d")
        k_pos = (idx[..., None] * b + torch.arange(b, device=device)).flatten(2)  # (B, n, S)
        k_ok = valid[:, part].repeat_interleave(b, dim=2) & (k_pos < tk)
        outs.append(_attend(qx[:, part], kg, vg, q_pos[None, part, :, None],
                            k_pos[:, :, None, :], k_ok[:, :, None, :], mask, h, scale,
                            dropout, softcap))
    out = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]

    # query blocks holding a global query: against every key
    full_rows, full_ok = first_true(layout.full.expand(batch, -1))  # (B, F)
    if full_rows.shape[1]:
        n_full = full_rows.shape[1]
        qf = qx[rows[..., 0], full_rows]  # (B, F, b, Hkv, G, D)
        kf = k[:, None].expand(-1, n_full, -1, -1, -1)
        vf = v[:, None].expand(-1, n_full, -1, -1, -1)
        k_all = torch.arange(tk, device=device)[None, None, None]
        out_full = _attend(qf, kf, vf, q_pos[full_rows][..., None], k_all,
                           full_ok[..., None, None], mask, h, scale, dropout, softcap)
        sel_b, sel_f = full_ok.nonzero(as_tuple=True)
        out = out.index_put((sel_b, full_rows[sel_b, sel_f]), out_full[sel_b, sel_f])

    out = rearrange(out, "b n c h g d -> b (n c) (h g) d")
    return out[:, lead : lead + tq]


def _attend(qx: Tensor, kg: Tensor, vg: Tensor, q_pos: Tensor, k_pos: Tensor, k_ok: Tensor,
            mask: AttentionMask, n_heads: int, scale: float, dropout: float,
            softcap: float | None) -> Tensor:
    """Dense attention inside gathered blocks.

    qx (B, N, b, Hkv, G, D), kg/vg (B, N, S, Hkv, D); q_pos (B|1, N, b, 1) absolute,
    k_pos (B|1, N, 1, S), k_ok (B|1, N, 1, S) -> (B, N, b, Hkv, G, D).
    """
    keep = mask.keep_at(q_pos, k_pos) & k_ok  # type: ignore[attr-defined]  # (B|1, N, b, S)
    if mask.key_padding is not None:
        keep = keep & lookup(mask.key_padding.to(qx.device), k_pos)

    # (B, N, Hkv, G, b, S); in-place where autograd allows it: this is the big tensor
    scores = torch.einsum("bnchgd,bnshd->bnhgcs", qx, kg).float().mul_(scale)
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)  # tanh keeps its output: no in-place
    if mask.bias is not None:
        scores.add_(_gather_bias(mask, q_pos, k_pos, qx.shape[0], n_heads, qx.shape[3]))
    scores.masked_fill_(~keep[:, :, None, None], torch.finfo(torch.float32).min)
    probs = scores.softmax(dim=-1)
    if dropout > 0.0:
        probs = F.dropout(probs, p=dropout, training=True)
    out = torch.einsum("bnhgcs,bnshd->bnchgd", probs.to(vg.dtype), vg)
    empty = ~keep.any(-1)  # (B|1, N, b)
    return out.masked_fill(empty[..., None, None, None], 0.0)


def _gather_bias(mask: AttentionMask, q_pos: Tensor, k_pos: Tensor, batch: int,
                 n_heads: int, n_kv_heads: int) -> Tensor:
    """The additive bias at the gathered pairs: (B, N, Hkv, G, b, S), float32."""
    bias = mask.bias.to(device=q_pos.device, dtype=torch.float32)  # type: ignore[union-attr]
    bias = bias.expand(batch, n_heads, mask.q_len, mask.k_len)
    rows = torch.arange(batch, device=q_pos.device)[:, None, None, None]
    qi = (q_pos - mask.q_offset).clamp(0, mask.q_len - 1)
    ki = k_pos.clamp(0, mask.k_len - 1)
    picked = bias[rows, :, qi, ki]  # advanced indices first: (B, N, b, S, H)
    return rearrange(picked, "b n c s (h g) -> b n h g c s", h=n_kv_heads)
