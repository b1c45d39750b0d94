"""Angular LSH by random rotations, and the sort-and-chunk plan of one attention call.

Kitaev, Kaiser & Levskaya 2020, "Reformer: The Efficient Transformer",
https://arxiv.org/abs/2001.04451, §2 (hashing ``h(x) = argmax([xR; -xR])`` with a
random ``R`` of shape ``(D, n_buckets / 2)``, after Andoni et al. 2015), sorting by
bucket and position, and cutting the sorted sequence into chunks.

Shapes: B batch, H heads, R hash rounds, Tq/Tk query/key length, D head_dim,
nb buckets, C chunk, nC = ceil(Tk / C) chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["ChunkPlan", "hash_buckets", "plan_chunks", "random_rotations"]


def random_rotations(dim: int, n_hashes: int, n_buckets: int, *,
                     generator: torch.Generator) -> Tensor:
    """Gaussian ``(D, R, nb / 2)``, one random projection per round (CPU, float32)."""
    return torch.randn(dim, n_hashes, max(n_buckets // 2, 1), generator=generator)


def hash_buckets(x: Tensor, rotations: Tensor, n_buckets: int) -> Tensor:
    """Bucket of every vector in every round: ``x (B, H, T, D) -> long (B, H, R, T)``.

    ``argmax([xR; -xR])``: vectors with close directions share a bucket with high
    probability. One bucket puts everything together.
    """
    b, h, t, _ = x.shape
    n_hashes = rotations.shape[1]
    if n_buckets == 1:
        return torch.zeros(b, h, n_hashes, t, dtype=torch.long, device=x.device)
    rotated = torch.einsum("bhtd,drk->bhrtk", x.float(), rotations.to(x.device))
    return torch.cat([rotated, -rotated], dim=-1).argmax(dim=-1)


@dataclass(frozen=True)
class ChunkPlan:
    """Where every query and key goes in every round.

    Attributes:
        key_order: long ``(B, H, R, nC·C)``, key ids in sorted order (bucket, then
            position), padded with the dummy id Tk.
        key_chunk: long ``(B, H, R, Tk + 1)``, the chunk of every key (dummy: -2).
        query_chunk: long ``(B, H, R, Tq)``, the chunk whose keys (and the previous
            chunk's) each query attends to.
        groups: long ``(B, H, R, nG, G)``, query ids processed together (dummy: Tq).
        group_chunk: long ``(B, H, R, nG)``, the chunk of each group.
        position: long ``(B, H, R, Tq)``, where query i sits in ``groups`` flattened.
        chunk: C.
    """

    key_order: Tensor
    key_chunk: Tensor
    query_chunk: Tensor
    groups: Tensor
    group_chunk: Tensor
    position: Tensor
    chunk: int


def plan_chunks(q_buckets: Tensor, k_buckets: Tensor, q_positions: Tensor, chunk: int) -> ChunkPlan:
    """Sort keys by (bucket, position), cut them into chunks, and place the queries.

    With as many queries as keys (self-attention) the queries are sorted the same way
    and cut into chunks of C too (Reformer): group n holds sorted queries
    ``n·C .. (n+1)·C - 1`` and reads key chunks n and n - 1. Otherwise (decoding
    with a cache, cross-attention) each query is its own group, placed in the chunk
    where the keys of its bucket at or before its position end.

    Args:
        q_buckets: long ``(B, H, R, Tq)``.
        k_buckets: long ``(B, H, R, Tk)``.
        q_positions: long ``(Tq,)``, absolute query positions (to order them in buckets).
        chunk: C.
    """
    *lead, tq = q_buckets.shape
    tk = k_buckets.shape[-1]
    device = k_buckets.device
    n_chunks = -(-tk // chunk)
    k_codes = k_buckets * tk + torch.arange(tk, device=device)
    sorted_codes, key_order = k_codes.sort(dim=-1)
    rank = torch.empty_like(key_order).scatter_(-1, key_order, torch.arange(tk, device=device)
                                                .expand_as(key_order).contiguous())
    key_chunk = torch.nn.functional.pad(rank.div(chunk, rounding_mode="floor"), (0, 1), value=-2)
    key_order = torch.nn.functional.pad(key_order, (0, n_chunks * chunk - tk), value=tk)

    if tq == tk:
        q_codes = q_buckets * tq + torch.arange(tq, device=device)
        order = q_codes.argsort(dim=-1)
        position = torch.empty_like(order).scatter_(
            -1, order, torch.arange(tq, device=device).expand_as(order).contiguous())
        query_chunk = position.div(chunk, rounding_mode="floor")
        groups = torch.nn.functional.pad(order, (0, n_chunks * chunk - tq), value=tq)
        groups = groups.view(*lead, n_chunks, chunk)
        group_chunk = torch.arange(n_chunks, device=device).expand(*lead, -1)
    else:  # after the keys of its bucket at or before its position
        q_codes = q_buckets * tk + q_positions.clamp(0, tk - 1)
        after = torch.searchsorted(sorted_codes, q_codes.contiguous(), right=True)
        query_chunk = (after - 1).clamp_min(0).div(chunk, rounding_mode="floor")
        groups = torch.arange(tq, device=device).expand(*lead, -1)[..., None]
        group_chunk = query_chunk
        position = torch.arange(tq, device=device).expand(*lead, -1)
    return ChunkPlan(key_order, key_chunk, query_chunk, groups, group_chunk, position, chunk)
