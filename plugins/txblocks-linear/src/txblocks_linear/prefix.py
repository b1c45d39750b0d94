"""Linear attention from feature maps: ``φ(q) (Σ φ(k) vᵀ) / φ(q) (Σ φ(k))``.

Katharopoulos et al. 2020, "Transformers are RNNs: Fast Autoregressive Transformers
with Linear Attention", https://arxiv.org/abs/2006.16236, eq. 4-6 (bidirectional) and
§3.2-3.3, eq. 9-12 (causal, through prefix sums). The causal form runs chunk by chunk
(as in Hua et al. 2022, "Transformer Quality in Linear Time", §3): a chunk reads the
state summed over earlier chunks (an exclusive cumulative sum) and adds its own keys
with a causal C×C product, so memory is ``O(T/C · M · D)`` instead of ``O(T · M · D)``.

Shapes: B batch, Tq/Tk query/key length, Hkv kv heads, G query heads per kv head,
M features, D value width, C chunk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

__all__ = ["linear_attention"]


def linear_attention(phi_q: Tensor, phi_k: Tensor, v: Tensor, *, causal: bool,
                     q_offset: int = 0, chunk: int = 64) -> Tensor:
    """Normalised linear attention.

    Args:
        phi_q: ``(B, Tq, Hkv, G, M)`` non-negative query features.
        phi_k: ``(B, Tk, Hkv, M)`` non-negative key features, zero for padded keys.
        v: ``(B, Tk, Hkv, D)``.
        causal: query i sees keys ``j <= q_offset + i`` only.
        q_offset: absolute position of query 0 (``>= 0``; causal only).
        chunk: C, queries per chunk of the causal form.

    Returns:
        ``(B, Tq, Hkv, G, D)``; 0 for queries whose visible keys all have zero features
        (no allowed key).
    """
    if not causal:
        kv = torch.einsum("bkhm,bkhd->bhmd", phi_k, v)  # Σ φ(k) vᵀ
        z = phi_k.sum(dim=1)  # Σ φ(k): (B, Hkv, M)
        num = torch.einsum("bqhgm,bhmd->bqhgd", phi_q, kv)
        den = torch.einsum("bqhgm,bhm->bqhg", phi_q, z)
        return _divide(num, den)
    if q_offset < 0:
        raise ValueError(f"causal linear attention needs q_offset >= 0, got {q_offset}")

    tq, tk = phi_q.shape[1], phi_k.shape[1]
    start = min(q_offset, tk)
    # keys before query 0 form the initial state; key q_offset + t lines up with query t
    s0 = torch.einsum("bkhm,bkhd->bhmd", phi_k[:, :start], v[:, :start])
    z0 = phi_k[:, :start].sum(dim=1)
    ka, va = phi_k[:, start : start + tq], v[:, start : start + tq]
    size = min(chunk, tq)
    n = -(-tq // size)
    pad_q, pad_k = n * size - tq, n * size - ka.shape[1]
    fq = rearrange(F.pad(phi_q, (0, 0, 0, 0, 0, 0, 0, pad_q)), "b (n c) h g m -> b n c h g m",
                   c=size)
    fk = rearrange(F.pad(ka, (0, 0, 0, 0, 0, pad_k)), "b (n c) h m -> b n c h m", c=size)
    fv = rearrange(F.pad(va, (0, 0, 0, 0, 0, pad_k)), "b (n c) h d -> b n c h d", c=size)

    # state of every earlier chunk: exclusive prefix sums over chunks, plus the keys before
    kv = torch.einsum("bnchm,bnchd->bnhmd", fk, fv).cumsum(dim=1)
    z = fk.sum(dim=2).cumsum(dim=1)  # (B, n, Hkv, M)
    kv = F.pad(kv[:, :-1], (0, 0, 0, 0, 0, 0, 1, 0)) + s0[:, None]
    z = F.pad(z[:, :-1], (0, 0, 0, 0, 1, 0)) + z0[:, None]
    num = torch.einsum("bnchgm,bnhmd->bnchgd", fq, kv)
    den = torch.einsum("bnchgm,bnhm->bnchg", fq, z)

    # inside each chunk: a causal C×C product
    scores = torch.einsum("bnchgm,bnshm->bnhgcs", fq, fk)
    scores = scores * torch.ones(size, size, dtype=torch.bool, device=fq.device).tril()
    num = num + torch.einsum("bnhgcs,bnshd->bnchgd", scores, fv)
    den = den + rearrange(scores.sum(dim=-1), "b n h g c -> b n c h g")
    out = _divide(num, den)
    return rearrange(out, "b n c h g d -> b (n c) h g d")[:, :tq]


def _divide(num: Tensor, den: Tensor) -> Tensor:
    """``num / den[..., None]``, and 0 where ``den`` is 0 (no visible key)."""
    seen = den > 0
    out = num / torch.where(seen, den, 1.0)[..., None]
    return out.masked_fill(~seen[..., None], 0.0)
