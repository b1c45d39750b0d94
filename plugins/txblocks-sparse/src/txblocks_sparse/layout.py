"""Block-sparse masks: a dense truth (``structure``) plus the block layout kernels gather.

A block-sparse mask is an :class:`~txblocks.attention.AttentionMask` that also says, per
block of ``b`` queries, which blocks of ``b`` keys hold an allowed pair. The
``block_sparse`` kernel then computes scores only there, so the cost is
``O(T · K · b)`` for ``K`` active key blocks per query block: linear in T when K is
fixed (Longformer: window + global; BigBird: window + global + random).

Shapes: B batch (Bm = B or 1 where a tensor is shared by every row), Tq queries,
Tk keys, b block size, nQ query blocks, nK key blocks, K key-block slots per query block.

Blocks: key block j holds key positions ``[j·b, (j+1)·b)``. Query blocks are aligned on
*absolute* positions (query i sits at ``q_offset + i``): query block n holds absolute
positions ``[(first + n)·b, (first + n + 1)·b)`` with ``first = q_offset // b``, so a
kernel pads ``q_offset - first·b`` queries in front.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from txblocks.attention.mask import AttentionMask

__all__ = ["BlockLayout", "BlockSparseMask", "SupportsBlocks", "lookup", "supports_blocks"]

Device = torch.device | str


@dataclass(frozen=True)
class BlockLayout:
    """Which key blocks each query block attends to.

    Attributes:
        block: b, the block size (queries and keys).
        first: absolute index of query block 0 (``q_offset // b``).
        n_key_blocks: nK = ceil(Tk / b).
        index: long ``(Bm, nQ, K)``, key-block ids; a slot with ``valid`` False holds 0.
            No key block appears twice in one row.
        valid: bool ``(Bm, nQ, K)``.
        full: bool ``(Bm, nQ)``, query blocks that may attend to any key (global
            rows): kernels compute them densely against every key; their slots are
            ignored.
    """

    block: int
    first: int
    n_key_blocks: int
    index: Tensor
    valid: Tensor
    full: Tensor

    @property
    def n_query_blocks(self) -> int:
        return self.index.shape[1]

    @property
    def slots(self) -> int:
        """K, key blocks gathered per query block (independent of T for fixed patterns)."""
        return self.index.shape[2]


@runtime_checkable
class SupportsBlocks(Protocol):
    """What the ``block_sparse`` kernel needs from a mask (besides ``AttentionMask``)."""

    def block_layout(self, device: Device) -> BlockLayout: ...

    def keep_at(self, q_pos: Tensor, k_pos: Tensor) -> Tensor: ...


def supports_blocks(mask: AttentionMask) -> bool:
    """True when ``mask`` exposes ``block_layout`` and ``keep_at``."""
    return isinstance(mask, SupportsBlocks)


def lookup(table: Tensor, pos: Tensor) -> Tensor:
    """``table (Bm, N)`` read at ``pos (Bp, ...)``; False (or 0) outside ``[0, N)``.

    Returns ``(max(Bm, Bp), ...)``; Bm and Bp are each 1 or B.
    """
    n = table.shape[1]
    batch = max(table.shape[0], pos.shape[0])
    flat = pos.reshape(pos.shape[0], -1).expand(batch, -1)
    got = table.expand(batch, -1).gather(1, flat.clamp(0, n - 1))
    inside = (flat >= 0) & (flat < n)
    got = got & inside if got.dtype == torch.bool else torch.where(inside, got, 0)
    return got.reshape(batch, *pos.shape[1:])


def first_true(flags: Tensor) -> tuple[Tensor, Tensor]:
    """Indices of the True entries of each row of ``flags (Bm, N)``, left-packed.

    Returns ``(index (Bm, M), valid (Bm, M))`` with M the largest count in a row;
    unused slots hold 0 and ``valid`` False.
    """
    count = int(flags.sum(1).max()) if flags.numel() else 0
    order = torch.argsort((~flags).to(torch.int8), dim=1, stable=True)[:, :count]
    valid = flags.gather(1, order)
    return torch.where(valid, order, 0), valid


@dataclass(frozen=True, eq=False)
class BlockSparseMask(AttentionMask):
    """Base of masks with a block layout: ``structure`` is derived from ``keep_at``.

    Subclasses implement :meth:`keep_at` (the element-wise definition) and
    :meth:`_layout` (the compact block layout, a superset of the allowed pairs and
    tight in practice); this class caches the layout and derives the dense
    :meth:`structure` and the block-level :meth:`block_structure` from them.
    """

    def keep_at(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """Bool keep-mask of the structure at absolute query / key positions.

        Args:
            q_pos: long ``(Bp, ...)``, absolute query positions.
            k_pos: long ``(Bp, ...)``, key positions; broadcastable with ``q_pos``.

        Returns:
            bool, broadcast of both (leading dim B where the mask is per row).
        """
        raise NotImplementedError

    def _layout(self, device: torch.device) -> BlockLayout:
        raise NotImplementedError

    def block_layout(self, device: Device) -> BlockLayout:
        """The compact layout for kernels (computed once per device)."""
        device = torch.device(device)
        cache = self.__dict__.setdefault("_txb_layouts", {})
        if device not in cache:
            cache[device] = self._layout(device)
        return cache[device]

    def query_positions(self, device: Device, first: int, n_blocks: int, block: int) -> Tensor:
        """Absolute positions ``(n_blocks, b)`` of the (padded) query blocks."""
        start = first * block
        return torch.arange(start, start + n_blocks * block, device=device).view(n_blocks, block)

    def structure(self, device: Device) -> Tensor:
        q, k = self.positions(device)
        return self.keep_at(q[None], k[None])

    def block_structure(self, device: Device) -> Tensor:
        """Bool ``(Bm, nQ, nK)``: (query block, key block) pairs holding an allowed pair.

        Query blocks as in :class:`BlockLayout` (aligned on absolute positions).
        Derived from the layout; full rows are resolved against every key.
        """
        layout = self.block_layout(device)
        b, nq, nk = layout.block, layout.n_query_blocks, layout.n_key_blocks
        out = torch.zeros(layout.index.shape[0], nq, nk, dtype=torch.int64, device=device)
        out = out.scatter_add(2, layout.index, layout.valid.long()) > 0
        out = out & ~layout.full[..., None]
        rows, fvalid = first_true(layout.full)
        if rows.shape[1]:
            q = self.query_positions(device, layout.first, nq, b)[rows]  # (Bm, F, b)
            exists = (q >= self.q_offset) & (q < self.q_offset + self.q_len)
            k = torch.arange(nk * b, device=device)
            keep = self.keep_at(q[..., None], k[None, None, None]) & (k < self.k_len)
            keep = keep & exists[..., None] & fvalid[..., None, None]
            active = keep.view(*keep.shape[:3], nk, b).any(-1).any(2)  # (Bm, F, nK)
            batch = torch.arange(rows.shape[0], device=device)[:, None].expand_as(rows)
            extra = torch.zeros_like(out, dtype=torch.int64).index_put(
                (batch, rows), active.long(), accumulate=True
            )  # invalid slots add zeros, so repeated indices are harmless
            out = out | (extra > 0)
        return out
