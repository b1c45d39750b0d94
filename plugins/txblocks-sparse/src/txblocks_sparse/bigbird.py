"""BigBird attention pattern: window, global and random blocks.

Zaheer et al. 2020, "Big Bird: Transformers for Longer Sequences",
https://arxiv.org/abs/2007.14062, §2 and appendix D (the blocked "ITC" pattern:
internal tokens made global).

Positions are cut into blocks of ``b``; block i is the absolute positions
``[i·b, (i+1)·b)``. Query block i attends to key block j when

* ``|i - j| <= (window_blocks - 1) / 2`` (sliding window of blocks),
* ``i < global_blocks`` or ``j < global_blocks`` (the leading blocks are global),
* j is one of the ``random_blocks`` blocks drawn for row i.

With ``causal`` every ``key > query`` pair is dropped as well, and random blocks are
drawn among earlier blocks only. Random blocks of row i are drawn with a generator
seeded by ``(seed, i)`` among the blocks the window and global blocks leave out, so a
row's draw does not depend on the batch or on the other rows (with ``causal``, nor
on the sequence length: decoding with a KV cache sees the same pattern).

Shapes: Tq queries, Tk keys, b block size, R random blocks per row.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass

import torch
from torch import Tensor

from txblocks.attention.strategies import MaskStrategy
from txblocks_sparse.layout import BlockLayout, BlockSparseMask

__all__ = ["BigBirdMask", "BigBirdStrategy", "draw_random_blocks"]


@functools.lru_cache(maxsize=64)
def _draw(seed: int, row: int, n_key_blocks: int, half: int, n_global: int, count: int,
          causal: bool) -> tuple[int, ...]:
    end = row - half if causal else n_key_blocks  # exclusive
    candidates = [j for j in range(n_global, end) if abs(j - row) > half]
    if not candidates or count == 0:
        return ()
    gen = torch.Generator().manual_seed(seed * 1_000_003 + row)
    picks = torch.randperm(len(candidates), generator=gen)[:count].tolist()
    return tuple(sorted(candidates[p] for p in picks))


def draw_random_blocks(seed: int, n_rows: int, n_key_blocks: int, *, window_blocks: int,
                       global_blocks: int, random_blocks: int, causal: bool) -> Tensor:
    """Random key blocks ``(n_rows, R)`` of query blocks 0..n_rows-1; -1 where none.

    Row i draws without replacement among the key blocks ``j >= global_blocks`` outside
    its window (and ``j < i`` when causal); global rows draw nothing.
    """
    half = (window_blocks - 1) // 2
    out = torch.full((n_rows, random_blocks), -1, dtype=torch.long)
    for row in range(global_blocks, n_rows):
        picks = _draw(seed, row, n_key_blocks, half, global_blocks, random_blocks, causal)
        out[row, : len(picks)] = torch.tensor(picks, dtype=torch.long)
    return out


@dataclass(frozen=True, eq=False)
class BigBirdMask(BlockSparseMask):
    """Window, global and random blocks (BigBird ITC).

    Args:
        block_size: b.
        window_blocks: odd number of blocks in the window (the own block included).
        global_blocks: number of leading global blocks.
        random_blocks: long ``(n_rows, R)``: the random key blocks of each absolute
            query block (-1 = none), from :func:`draw_random_blocks`.
        causal: no query sees a later key.
    """

    _: KW_ONLY
    block_size: int
    window_blocks: int = 3
    global_blocks: int = 1
    random_blocks: Tensor
    causal: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.block_size < 1 or self.window_blocks < 1 or self.window_blocks % 2 == 0:
            raise ValueError(
                f"BigBirdMask: block_size must be >= 1 and window_blocks odd, got "
                f"{self.block_size}, {self.window_blocks}"
            )
        rows = (self.q_offset + self.q_len - 1) // self.block_size + 1
        if self.random_blocks.ndim != 2 or self.random_blocks.shape[0] < rows:
            raise ValueError(
                f"BigBirdMask: random_blocks must be (n_rows >= {rows}, R), got "
                f"{tuple(self.random_blocks.shape)}"
            )

    @property
    def half(self) -> int:
        return (self.window_blocks - 1) // 2

    def keep_at(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        b, g = self.block_size, self.global_blocks
        qb, kb = q_pos.div(b, rounding_mode="floor"), k_pos.div(b, rounding_mode="floor")
        keep = ((qb - kb).abs() <= self.half) | (qb < g) | (kb < g)
        table = self.random_blocks.to(q_pos.device)  # (rows, R)
        rows = qb.clamp(0, table.shape[0] - 1)
        inside = (qb >= 0) & (qb < table.shape[0])
        for r in range(table.shape[1]):
            keep = keep | (inside & (table[:, r][rows] == kb))
        if self.causal:
            keep = keep & (k_pos <= q_pos)
        return keep

    def _layout(self, device: torch.device) -> BlockLayout:
        b, g, h = self.block_size, self.global_blocks, self.half
        first = self.q_offset // b
        n_q = (self.q_offset + self.q_len - 1) // b - first + 1
        n_k = -(-self.k_len // b)
        rows = first + torch.arange(n_q, device=device)  # absolute query blocks (nQ,)
        window = rows[:, None] + torch.arange(-h, 1 if self.causal else h + 1, device=device)
        w_valid = (window >= 0) & (window < n_k)
        lead = torch.arange(g, device=device).expand(n_q, -1)
        g_valid = (lead < n_k) & ~((lead >= rows[:, None] - h) & (lead <= rows[:, None] + h))
        table = self.random_blocks.to(device)
        rand = table[rows.clamp(0, table.shape[0] - 1)]
        r_valid = (rand >= 0) & (rand < n_k) & (rows >= 0)[:, None]
        index = torch.cat([window, lead, rand], dim=1)[None]
        valid = torch.cat([w_valid, g_valid, r_valid], dim=1)[None]
        full = ((rows >= 0) & (rows < g))[None]
        return BlockLayout(b, first, n_k, torch.where(valid, index, 0), valid, full)


class BigBirdStrategy(MaskStrategy):
    """BigBird blocks: window, leading global blocks and seeded random blocks.

    Args:
        block_size: b.
        window_blocks: odd count of window blocks (own block included).
        global_blocks: leading global blocks.
        random_blocks: random key blocks per query block.
        seed: seeds the random blocks (same seed, same pattern).
        causal: no query sees a later key.
    """

    name = "bigbird"

    def __init__(self, block_size: int = 64, *, window_blocks: int = 3, global_blocks: int = 1,
                 random_blocks: int = 3, seed: int = 0, causal: bool = False) -> None:
        if block_size < 1 or window_blocks < 1 or window_blocks % 2 == 0:
            raise ValueError(
                f"bigbird: block_size must be >= 1 and window_blocks odd, got {block_size}, "
                f"{window_blocks}"
            )
        if global_blocks < 0 or random_blocks < 0:
            raise ValueError("bigbird: global_blocks and random_blocks must be >= 0")
        self.block_size, self.window_blocks = block_size, window_blocks
        self.global_blocks, self.n_random = global_blocks, random_blocks
        self.seed, self.causal = seed, causal
        self._tables: dict[tuple[int, int], Tensor] = {}

    def random_table(self, n_rows: int, n_key_blocks: int) -> Tensor:
        """The random key blocks ``(n_rows, R)`` this strategy uses (cached per shape)."""
        key = (n_rows, n_key_blocks)
        if key not in self._tables:
            if len(self._tables) >= 128:  # decoding walks through many lengths
                self._tables.clear()
            self._tables[key] = self._draw_table(n_rows, n_key_blocks)
        return self._tables[key]

    def _draw_table(self, n_rows: int, n_key_blocks: int) -> Tensor:
        return draw_random_blocks(
            self.seed, n_rows, n_key_blocks, window_blocks=self.window_blocks,
            global_blocks=self.global_blocks, random_blocks=self.n_random, causal=self.causal,
        )

    def __call__(
        self,
        q_len: int,
        k_len: int,
        *,
        key_padding: Tensor | None = None,
        q_offset: int | None = None,
        seq_lens: Sequence[Sequence[int]] | None = None,
        prefix_lengths: Tensor | Sequence[int] | None = None,
    ) -> BigBirdMask:
        if seq_lens is not None:
            raise ValueError(
                "bigbird does not support packed sequences (seq_lens); unpack the batch"
            )
        offset = k_len - q_len if q_offset is None else q_offset
        n_rows = max((offset + q_len - 1) // self.block_size + 1, 1)
        table = self.random_table(n_rows, -(-k_len // self.block_size))
        return BigBirdMask(
            q_len, k_len, q_offset=q_offset, key_padding=key_padding, block_size=self.block_size,
            window_blocks=self.window_blocks, global_blocks=self.global_blocks,
            random_blocks=table, causal=self.causal,
        )

    def __repr__(self) -> str:
        return (
            f"BigBirdStrategy(block_size={self.block_size}, window_blocks={self.window_blocks}, "
            f"global_blocks={self.global_blocks}, random_blocks={self.n_random}, "
            f"seed={self.seed}, causal={self.causal})"
        )
