"""Longformer attention pattern: a sliding window plus global tokens.

Beltagy, Peters & Cohan 2020, "Longformer: The Long-Document Transformer",
https://arxiv.org/abs/2004.05150, §3.1 (sliding window, global attention).

Query at absolute position p and key j (window w):

* symmetric: ``|p - j| < w`` (the window mirrored: 2w - 1 keys; Hugging Face's
  ``attention_window = W`` is ``w = W // 2 + 1`` here);
* causal: ``p - w < j <= p`` (w keys, the query's own included, as ``sliding_window``);
* a global token attends to every key and every query attends to it;
* causal masks also drop every ``j > p``, global pairs included.

Shapes: B batch (Bm = B or 1), Tq queries, Tk keys, b block size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass

import torch
from torch import Tensor

from txblocks.attention.strategies import MaskStrategy
from txblocks_sparse.layout import BlockLayout, BlockSparseMask, Device, first_true, lookup

__all__ = ["LongformerMask", "LongformerStrategy"]


@dataclass(frozen=True, eq=False)
class LongformerMask(BlockSparseMask):
    """Sliding window (symmetric or causal) plus global tokens.

    Args:
        window: w >= 1 (see the module docstring for both directions).
        causal: no query sees a later key.
        block_size: b, the tiling used by block-sparse kernels (does not change
            which keys are seen).
        global_tokens: bool ``(Bm, Tk)``, True at the (absolute) positions of global
            tokens, or None.
    """

    _: KW_ONLY
    window: int
    causal: bool = False
    block_size: int = 64
    global_tokens: Tensor | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.window < 1 or self.block_size < 1:
            raise ValueError(
                f"LongformerMask: window and block_size must be >= 1, got {self.window}, "
                f"{self.block_size}"
            )
        glob = self.global_tokens
        if glob is not None and (glob.dtype != torch.bool or glob.ndim != 2
                                 or glob.shape[1] != self.k_len):
            raise ValueError(
                f"LongformerMask: global_tokens must be bool (B|1, Tk={self.k_len}), got "
                f"{glob.dtype} {tuple(glob.shape)}"
            )

    def _globals(self, device: Device) -> Tensor | None:
        return None if self.global_tokens is None else self.global_tokens.to(device)

    def keep_at(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        d = q_pos - k_pos
        keep = (d >= 0) & (d < self.window) if self.causal else d.abs() < self.window
        glob = self._globals(q_pos.device)
        if glob is not None:
            keep = keep | lookup(glob, q_pos) | lookup(glob, k_pos)
        if self.causal:
            keep = keep & (d >= 0)
        return keep

    def _layout(self, device: torch.device) -> BlockLayout:
        b, w, tk = self.block_size, self.window, self.k_len
        first = self.q_offset // b
        n_q = (self.q_offset + self.q_len - 1) // b - first + 1
        n_k = -(-tk // b)
        starts = (first + torch.arange(n_q, device=device)) * b
        q_lo = starts.clamp_min(self.q_offset)  # first and last existing query of each block
        q_hi = (starts + b - 1).clamp_max(self.q_offset + self.q_len - 1)

        # window: one contiguous run of key blocks per query block
        k_lo = (q_lo - w + 1).clamp_min(0)
        k_hi = (q_hi if self.causal else q_hi + w - 1).clamp_max(tk - 1)
        lo, hi = k_lo.div(b, rounding_mode="floor"), k_hi.div(b, rounding_mode="floor")
        count = torch.where(k_lo <= k_hi, hi - lo + 1, 0)
        slots = torch.arange(int(count.max()), device=device)
        index = (lo[:, None] + slots)[None]  # (1, nQ, Kw)
        valid = (slots < count[:, None])[None]
        full = torch.zeros(1, n_q, dtype=torch.bool, device=device)

        glob = self._globals(device)
        if glob is not None:
            padded = torch.nn.functional.pad(glob, (0, n_k * b - tk)).view(-1, n_k, b)
            positions = torch.arange(n_k * b, device=device).view(n_k, b)
            earliest = torch.where(padded, positions, n_k * b).amin(-1)  # (Bm, nK)
            g_index, g_valid = first_true(padded.any(-1))  # (Bm, Kg): blocks holding globals
            in_window = (g_index[:, None] >= lo[None, :, None]) & (
                g_index[:, None] <= hi[None, :, None]) & (count > 0)[None, :, None]
            g_valid = g_valid[:, None] & ~in_window  # (Bm, nQ, Kg)
            if self.causal:  # a global key is seen only by queries at or after it
                g_valid = g_valid & (earliest.gather(1, g_index)[:, None] <= q_hi[None, :, None])
            batch = g_valid.shape[0]
            index = torch.cat([index.expand(batch, -1, -1),
                               g_index[:, None].expand(-1, n_q, -1)], dim=2)
            valid = torch.cat([valid.expand(batch, -1, -1), g_valid], dim=2)
            # query blocks holding a global query attend everywhere: computed densely
            sums = torch.nn.functional.pad(glob.long().cumsum(1), (1, 0))  # (Bm, Tk + 1)
            a, e = q_lo.clamp(0, tk), (q_hi + 1).clamp(0, tk)
            full = (sums[:, e] - sums[:, a]) > 0
        index = torch.where(valid, index, 0)
        return BlockLayout(b, first, n_k, index, valid, full.expand(index.shape[0], -1))


class LongformerStrategy(MaskStrategy):
    """Longformer: sliding window (symmetric or causal) plus global tokens.

    Global tokens come from, together: fixed absolute ``global_positions``; with
    ``global_prefix``, the call's ``prefix_lengths`` (the first n tokens of each row are
    global: a question before a document, a [CLS] token); a ``global_tokens`` bool
    ``(B, Tk)`` passed to the call (Hugging Face's ``global_attention_mask``).

    Args:
        window: w >= 1.
        causal: no query sees a later key.
        global_positions: absolute positions of global tokens (those >= Tk are ignored).
        global_prefix: read the call's ``prefix_lengths`` as counts of leading global
            tokens.
        block_size: tiling for block-sparse kernels.
    """

    name = "longformer"

    def __init__(self, window: int, *, causal: bool = False,
                 global_positions: Sequence[int] = (), global_prefix: bool = False,
                 block_size: int = 64) -> None:
        if window < 1 or block_size < 1 or any(p < 0 for p in global_positions):
            raise ValueError(
                f"longformer: window and block_size must be >= 1 and global_positions >= 0, "
                f"got {window}, {block_size}, {list(global_positions)}"
            )
        self.window_size = window  # no cache_window: global tokens must stay in a KV cache
        self.causal = causal
        self.global_positions = tuple(sorted(set(global_positions)))
        self.global_prefix = global_prefix
        self.block_size = block_size

    def __call__(
        self,
        q_len: int,
        k_len: int,
        *,
        key_padding: Tensor | None = None,
        q_offset: int | None = None,
        seq_lens: Sequence[Sequence[int]] | None = None,
        prefix_lengths: Tensor | Sequence[int] | None = None,
        global_tokens: Tensor | None = None,
    ) -> LongformerMask:
        """The mask of one call; ``global_tokens`` is bool ``(B, Tk)`` (True = global)."""
        if seq_lens is not None:
            raise ValueError(
                "longformer does not support packed sequences (seq_lens); unpack the batch"
            )
        device = next((t.device for t in (key_padding, global_tokens, prefix_lengths)
                       if isinstance(t, Tensor)), torch.device("cpu"))
        positions = torch.arange(k_len, device=device)
        parts = []
        if self.global_positions:
            fixed = torch.tensor([p for p in self.global_positions if p < k_len],
                                 dtype=torch.long, device=device)
            parts.append(torch.isin(positions, fixed)[None])
        if self.global_prefix and prefix_lengths is not None:
            lengths = torch.as_tensor(prefix_lengths, device=device).reshape(-1, 1)
            parts.append(positions[None] < lengths)
        if global_tokens is not None:
            parts.append(global_tokens.to(device=device, dtype=torch.bool))
        glob = None
        for part in parts:
            glob = part if glob is None else glob | part
        return LongformerMask(
            q_len, k_len, q_offset=q_offset, key_padding=key_padding, window=self.window_size,
            causal=self.causal, block_size=self.block_size, global_tokens=glob,
        )

    def __repr__(self) -> str:
        return (
            f"LongformerStrategy(window={self.window_size}, causal={self.causal}, "
            f"global_positions={list(self.global_positions)}, "
            f"global_prefix={self.global_prefix}, block_size={self.block_size})"
        )
