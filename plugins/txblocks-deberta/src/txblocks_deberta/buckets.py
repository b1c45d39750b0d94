"""DeBERTa-v2's log buckets of relative positions (He et al. 2021, "DeBERTa", §A.1; v2 code)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["bucket_problem", "log_bucket_position", "relative_index"]


def log_bucket_position(relative: Tensor, buckets: int, max_position: int) -> Tensor:
    """Bucket each relative position ``i - j``: exact within ``±buckets // 2``, logarithmic
    beyond, reaching ``±(buckets - 1)`` at a distance of ``max_position - 1`` (and more past it).

    Computed as ``transformers``' ``make_log_bucket_position`` does, step for step in the
    default float dtype, so the buckets are the same integers (a rounding at a bucket edge
    would move a position).

    Args:
        relative: integer tensor of ``query_pos - key_pos``, any shape.
        buckets: ``position_buckets`` (2 or more).
        max_position: ``max_relative_positions`` (more than ``buckets // 2 + 1``).

    Returns:
        Long tensor of the same shape; odd in ``relative`` (``f(-r) = -f(r)``).
    """
    mid = buckets // 2
    sign = torch.sign(relative)
    inside = (relative < mid) & (relative > -mid)
    # positions inside get a dummy distance (mid - 1): their log is computed, then discarded
    distance = torch.where(inside, torch.full_like(relative, mid - 1), relative.abs())
    scale = torch.log(torch.tensor((max_position - 1) / mid, device=relative.device))
    log_pos = torch.ceil(torch.log(distance / mid) / scale * (mid - 1)) + mid
    bucket = torch.where(distance <= mid, relative.to(log_pos.dtype), log_pos * sign)
    return bucket.to(torch.long)


def relative_index(
    q_len: int, k_len: int, q_offset: int, span: int, *, buckets: int, max_position: int,
    device: torch.device,
) -> Tensor:  # fmt: skip
    """Rows of the relative-embedding table ``(2·span, C)`` for each query and key: ``(Tq, Tk)``.

    Query ``i`` sits at key position ``q_offset + i``; the pair's relative position
    ``δ = (q_offset + i) - j`` is bucketed when ``buckets > 0`` and shifted by ``span``
    into ``0 .. 2·span - 1`` (clamped), as DeBERTa-v2's ``c2p_pos``.
    """
    query = torch.arange(q_len, dtype=torch.long, device=device)[:, None] + q_offset
    key = torch.arange(k_len, dtype=torch.long, device=device)[None, :]
    relative = query - key
    if buckets > 0:
        relative = log_bucket_position(relative, buckets, max_position)
    return torch.clamp(relative + span, 0, 2 * span - 1)


def bucket_problem(buckets: int, max_position: int) -> str | None:
    """Why ``buckets`` and ``max_position`` do not make log buckets, or None."""
    if buckets == 0:
        return None
    if buckets < 2:
        return f"position_buckets must be 0 (no buckets) or at least 2, got {buckets}"
    if max_position - 1 <= buckets // 2:
        return (f"max_relative_positions ({max_position}) must exceed position_buckets // 2 + 1 "
                f"({buckets // 2 + 1}): the log buckets grow from there")
    return None
