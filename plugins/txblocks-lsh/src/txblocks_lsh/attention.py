"""LSH attention: each query attends to the keys of its hash chunk and the previous one.

Kitaev, Kaiser & Levskaya 2020, "Reformer: The Efficient Transformer", §2-§2.2:
hash queries and keys (``n_hashes`` rounds), sort each round by (bucket, position),
attend within a chunk and to the chunk before it, undo the sort, and combine the
rounds with weights ``exp(lse_r - logsumexp_r lse_r)``.

Two choices of this implementation:

* **q and k are hashed separately** (no shared-QK). txblocks' attention layer projects
  q and k apart and the kernel contract is ``softmax(q kᵀ)`` for those q, k; Reformer's
  shared-QK (k = q / |q|) would ignore the given k. Hashing both with the same random
  rotation sends a query and a key of similar direction to the same bucket; chunks
  are cut from the sorted keys, and the queries are sorted and cut the same way.
* **each query also attends to the key at its own position** (when the mask allows
  it), so that no row is left without keys by hashing; and a key met in several
  rounds is counted once (its score is lowered by the log of the number of rounds
  in which the query meets it). The result is then exactly softmax attention over the
  union of the keys met in any round; with one bucket and one chunk, that is every key.

Shapes: B batch, H heads (kv heads repeated), R rounds, Tq/Tk, D head_dim, C chunk,
nG query groups of G queries, S = 2C keys read per group.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from txblocks_lsh.hashing import ChunkPlan

__all__ = ["lsh_attention", "met_keys"]

Keep = Callable[[Tensor, Tensor], Tensor]  # (query positions, key positions) -> bool

#: Scores computed at once (floats): about 16 MB, so that a slab of query groups stays in
#: cache. Only the speed depends on it.
SLAB_SCORES = 1 << 22


def _take(x: Tensor, index: Tensor) -> Tensor:
    """Rows of ``x (B, H, T, D)`` at ``index (B, H, R, ...)``: ``(B, H, R, ..., D)``."""
    b, h, _, d = x.shape
    flat = index.reshape(b, h, -1)
    return x.gather(2, flat[..., None].expand(-1, -1, -1, d)).view(*index.shape, d)


def _read(table: Tensor, index: Tensor) -> Tensor:
    """``table (B, H, T)`` at ``index (B, H, R, ...)``."""
    b, h = table.shape[:2]
    return table.gather(2, index.reshape(b, h, -1)).view(index.shape)


def _slots(plan: ChunkPlan) -> Tensor:
    """Key ids read by every group: its chunk, then the previous one ``(B, H, R, nG, 2C)``."""
    c, dummy = plan.chunk, plan.key_chunk.shape[-1] - 1
    starts = torch.stack([plan.group_chunk, plan.group_chunk - 1], dim=-1) * c  # (.., nG, 2)
    spots = (starts[..., None] + torch.arange(c, device=starts.device)).flatten(-2)
    order = plan.key_order
    ids = order.gather(-1, spots.clamp_min(0).flatten(-2)).view(spots.shape)
    return torch.where(spots >= 0, ids, dummy)


def _log_meetings(plan: ChunkPlan, queries: Tensor, keys: Tensor) -> Tensor:
    """Log of the number of rounds each query meets each key: ``(B, H, R, n, G, S)``, float32.

    Zero with one round. Where a pair is not met in its own round the value is unused.
    """
    n_rounds = plan.key_chunk.shape[2]
    if n_rounds == 1:
        return torch.zeros((), device=keys.device)
    count = torch.zeros(*queries.shape, keys.shape[-1], dtype=torch.uint8, device=keys.device)
    q_chunks = F.pad(plan.query_chunk, (0, 1), value=-5)  # dummy query: meets nothing
    for r in range(n_rounds):  # met in round r: the key's chunk is the query's or the one before
        q_chunk = _read(q_chunks[:, :, r], queries).int()[..., None]  # (B, H, R, n, G, 1)
        k_chunk = _read(plan.key_chunk[:, :, r], keys).int()[..., None, :]  # (B, H, R, n, 1, S)
        gap = q_chunk - k_chunk
        count += (gap >= 0) & (gap <= 1)
    return count.clamp_min(1).float().log()


def lsh_attention(q: Tensor, k: Tensor, v: Tensor, plan: ChunkPlan, *, keep: Keep,
                  key_padding: Tensor | None, q_offset: int, scale: float,
                  softcap: float | None = None) -> Tensor:
    """Attention over the keys each query meets: q (B, H, Tq, D), k/v (B, H, Tk, D) -> q's shape.

    Args:
        plan: from :func:`txblocks_lsh.hashing.plan_chunks`.
        keep: the mask's structure at (query, key) positions.
        key_padding: bool ``(B, Tk)``, True for real keys.
        q_offset: absolute position of query 0.
    """
    b, h, tq, _ = q.shape
    tk = k.shape[2]
    qx = F.pad(q, (0, 0, 0, 1))  # a dummy query row (id Tq) and key row (id Tk)
    kx, vx = F.pad(k, (0, 0, 0, 1)), F.pad(v, (0, 0, 0, 1))
    allowed = torch.ones(b, tk + 1, dtype=torch.bool, device=q.device)
    if key_padding is not None:
        allowed[:, :tk] = key_padding.to(q.device)
    allowed[:, tk] = False  # the dummy key
    allowed = allowed[:, None].expand(-1, h, -1)

    queries, keys = plan.groups, _slots(plan)  # (B, H, R, nG, G), (B, H, R, nG, S)
    n_groups, size, n_keys = queries.shape[3], queries.shape[4], keys.shape[4]
    slab = max(1, SLAB_SCORES // (b * h * queries.shape[2] * size * (n_keys + 1)))
    parts = [
        _attend_groups(qx, kx, vx, plan, queries[:, :, :, i : i + slab],
                       keys[:, :, :, i : i + slab], allowed, keep, q_offset, tq, tk, scale,
                       softcap)
        for i in range(0, n_groups, slab)
    ]
    out, lse, seen = (torch.cat(p, dim=3) if len(parts) > 1 else p[0] for p in zip(*parts))

    # undo the sort: back to query order, then combine the rounds
    out = _take_rounds(out.flatten(3, 4), plan.position)  # (B, H, R, Tq, D)
    lse = lse.flatten(3).gather(-1, plan.position)
    seen = seen.flatten(3).gather(-1, plan.position)
    lse = lse.masked_fill(~seen, torch.finfo(torch.float32).min)
    weights = (lse - lse.logsumexp(dim=2, keepdim=True)).exp()  # (B, H, R, Tq)
    out = (weights[..., None].to(out.dtype) * out).sum(dim=2)
    return out.masked_fill(~seen.any(dim=2)[..., None], 0.0)


def _attend_groups(qx: Tensor, kx: Tensor, vx: Tensor, plan: ChunkPlan, queries: Tensor,
                   keys: Tensor, allowed: Tensor, keep: Keep, q_offset: int, tq: int, tk: int,
                   scale: float, softcap: float | None) -> tuple[Tensor, Tensor, Tensor]:
    """One slab of groups: queries (B, H, R, n, G) over their keys (B, H, R, n, S) and own key.

    Returns the per-round output (B, H, R, n, G, D), its logsumexp and whether any key
    was allowed (B, H, R, n, G).
    """
    q_pos = queries + q_offset
    self_ids = torch.where((q_pos >= 0) & (q_pos < tk) & (queries < tq), q_pos, tk)
    chunk_ok = keep(q_pos[..., None], keys[..., None, :]) & _read(allowed, keys)[..., None, :]
    chunk_ok = chunk_ok & (keys[..., None, :] != self_ids[..., None])  # the self slot has it
    self_ok = keep(q_pos, self_ids) & _read(allowed, self_ids)  # (B, H, R, n, G)
    ok = torch.cat([chunk_ok, self_ok[..., None]], dim=-1)  # (.., G, S + 1)

    qg = _take(qx, queries)  # (B, H, R, n, G, D)
    kg, vg = _take(kx, keys), _take(vx, keys)  # (B, H, R, n, S, D)
    ks, vs = _take(kx, self_ids), _take(vx, self_ids)  # (B, H, R, n, G, D)
    scores = torch.cat([torch.einsum("bhrngd,bhrnsd->bhrngs", qg, kg),
                        (qg * ks).sum(-1, keepdim=True)], dim=-1).float().mul_(scale)
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)  # tanh keeps its output: no in-place
    n_rounds = plan.key_chunk.shape[2]
    if n_rounds > 1:  # a key met in m rounds counts 1/m in each (the own key: in every round)
        scores[..., :-1] -= _log_meetings(plan, queries, keys)
        scores[..., -1] -= float(torch.log(torch.tensor(float(n_rounds))))
    scores.masked_fill_(~ok, torch.finfo(torch.float32).min)

    lse = scores.logsumexp(dim=-1)  # (B, H, R, n, G)
    probs = (scores - lse[..., None]).exp_().to(vx.dtype)
    out = torch.einsum("bhrngs,bhrnsd->bhrngd", probs[..., :-1], vg) + probs[..., -1:] * vs
    return out, lse, ok.any(-1)


def _take_rounds(x: Tensor, position: Tensor) -> Tensor:
    """``x (B, H, R, N, D)`` at ``position (B, H, R, Tq)`` along N."""
    return x.gather(3, position[..., None].expand(-1, -1, -1, -1, x.shape[-1]))


def met_keys(plan: ChunkPlan, *, tq: int, tk: int, q_offset: int) -> Tensor:
    """Bool ``(B, H, Tq, Tk)``: the keys each query meets in some round (its own included).

    The set :func:`lsh_attention` attends to, before the mask; for tests and inspection
    (dense: ``O(Tq·Tk)``).
    """
    b, h, n_rounds = plan.groups.shape[:3]
    device = plan.groups.device
    met = torch.zeros(b, h, tq + 1, tk + 1, dtype=torch.bool, device=device)
    keys = _slots(plan)
    queries = plan.groups
    for r in range(n_rounds):
        qi = queries[:, :, r][..., None].expand(-1, -1, -1, -1, keys.shape[-1])
        ki = keys[:, :, r][..., None, :].expand_as(qi)
        bi = torch.arange(b, device=device)[:, None, None, None, None].expand_as(qi)
        hi = torch.arange(h, device=device)[None, :, None, None, None].expand_as(qi)
        met[bi, hi, qi, ki] = True
    own = torch.arange(tq, device=device) + q_offset
    inside = (own >= 0) & (own < tk)
    met[:, :, torch.arange(tq, device=device)[inside], own[inside]] = True
    return met[:, :, :tq, :tk]
