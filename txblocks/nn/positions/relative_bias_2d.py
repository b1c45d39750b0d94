"""BEiT's 2-D relative position bias (Bao et al. 2022, "BEiT: BERT Pre-Training of Image
Transformers", §2.2; from Liu et al. 2021, Swin).

Shapes: H heads, Gh/Gw the patch grid, N = Gh·Gw patches, R = (2Gh-1)(2Gw-1) + 3 rows.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from txblocks.nn.positional import PositionalScheme

__all__ = ["RelativePositionBias2D", "relative_position_index_2d"]


def relative_position_index_2d(grid: tuple[int, int]) -> Tensor:
    """Row of the bias table for each (query, key) pair of ``[class] + patches``: (N+1, N+1).

    Patches i, j read row ``(dy + Gh - 1)·(2Gw - 1) + (dx + Gw - 1)`` with ``(dy, dx)`` the
    grid offset of i from j; the class token's row, column and corner are the last three rows
    (class to patch ``R-3``, patch to class ``R-2``, class to class ``R-1``).
    """
    gh, gw = grid
    rows = (2 * gh - 1) * (2 * gw - 1) + 3
    ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()])  # (2, N)
    rel = coords[:, :, None] - coords[:, None, :]  # (2, N, N)
    index = torch.zeros(gh * gw + 1, gh * gw + 1, dtype=torch.long)
    index[1:, 1:] = (rel[0] + gh - 1) * (2 * gw - 1) + rel[1] + gw - 1
    index[0, :] = rows - 3
    index[:, 0] = rows - 2
    index[0, 0] = rows - 1
    return index


class RelativePositionBias2D(PositionalScheme):
    """A learned bias per head for each 2-D offset between patches, added to the attention
    scores; the class token (first) has three learned entries of its own.

    Args:
        n_heads: H.
        grid: (Gh, Gw) patches.
        layers: one table for each of this many layers (BEiT's
            ``use_relative_position_bias``); None: one table shared by every layer.
    """

    def __init__(self, n_heads: int, grid: tuple[int, int], *, layers: int | None = None) -> None:
        super().__init__()
        self.grid = grid
        rows = (2 * grid[0] - 1) * (2 * grid[1] - 1) + 3
        self.per_layer = layers is not None
        self.tables = nn.ParameterList(
            nn.Parameter(torch.zeros(rows, n_heads)) for _ in range(layers or 1))
        self.register_buffer("index", relative_position_index_2d(grid), persistent=False)

    #: The bias depends on 2-D offsets, not on the 1-D distance ``k - q``.
    relative = False

    def attention_bias(self, q_len: int, k_len: int, q_offset: int, causal: bool,
                       device: torch.device, dtype: torch.dtype, layer: int = 0) -> Tensor | None:
        """Bias (1, H, Tq, Tk) of layer ``layer`` (its own table, or the shared one): rows
        ``q_offset .. q_offset + Tq`` and columns ``0 .. Tk`` of the (N+1, N+1) bias."""
        n = self.index.shape[0]
        if q_offset + q_len > n or k_len > n:
            raise ValueError(
                f"relative_bias_2d is built for a {self.grid[0]}x{self.grid[1]} patch grid and "
                f"a class token ({n} tokens); got {q_len} queries after {q_offset} and {k_len} keys")
        table = self.tables[layer if self.per_layer else 0]
        index = self.index[q_offset:q_offset + q_len, :k_len].to(device)
        return table[index].permute(2, 0, 1)[None].to(dtype)  # (1, H, Tq, Tk)
