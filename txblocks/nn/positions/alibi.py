"""Attention with Linear Biases (ALiBi, Press et al. 2022)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from txblocks.nn.positional import PositionalScheme

__all__ = ["ALiBi", "alibi_slope_tensor", "alibi_slopes"]


def alibi_slopes(n_heads: int) -> list[float]:
    """The head slopes of ALiBi (Press et al. 2022, §3), as in the paper's reference code.

    For ``n`` a power of two: the geometric sequence ``2^(-8/n), 2^(-16/n), ..., 2^(-8)``.
    Otherwise, with ``p`` the largest power of two below ``n``: the ``p`` slopes of ``p``
    heads followed by every other slope (``[0::2]``) of the ``2p`` sequence, the first
    ``n - p`` of them.

    Args:
        n_heads: number of attention heads, at least 1.

    Returns:
        ``n_heads`` slopes, one per head, largest first.
    """
    if n_heads < 1:
        raise ValueError(f"ALiBi needs at least one head, got n_heads={n_heads}")

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_heads).is_integer():
        return power_of_two(n_heads)
    closest = 2 ** math.floor(math.log2(n_heads))
    return power_of_two(closest) + alibi_slopes(2 * closest)[0::2][: n_heads - closest]


def alibi_slope_tensor(n_heads: int, device: torch.device | str) -> Tensor:
    """:func:`alibi_slopes` as a float32 ``(H,)`` tensor made on ``device`` from ``arange``.

    ``torch.tensor(alibi_slopes(n))`` would copy from the host at every call: in a compiled
    decoding step replayed as a CUDA graph, that copy cannot be captured. The powers are
    taken in float64, as the list's, so the float32 values are the same.
    """

    def powers(n: int, exponents: Tensor) -> Tensor:
        return (2.0 ** (-8.0 / n)) ** exponents  # start ** k, as power_of_two

    closest = 2 ** math.floor(math.log2(n_heads))
    count = torch.arange(1, closest + 1, dtype=torch.float64, device=device)
    slopes = powers(closest, count)
    if closest < n_heads:  # every other slope of the 2p sequence: exponents 1, 3, 5, ...
        odd = torch.arange(1, 2 * (n_heads - closest), 2, dtype=torch.float64, device=device)
        slopes = torch.cat([slopes, powers(2 * closest, odd)])
    return slopes.float()


class ALiBi(PositionalScheme):
    """Linear attention biases: head h adds ``-m_h · distance`` to its scores (Press et al. 2022).

    For query ``i`` (at key position ``q_offset + i``) and key ``j`` the bias is
    ``-m_h · ((q_offset + i) - j)`` when the attention is causal (keys after the query are
    masked anyway, so their sign does not matter) and ``-m_h · |q_offset + i - j|`` when it
    is bidirectional. The slopes ``m_h`` are :func:`alibi_slopes`. No embedding is added and
    q, k are not rotated.

    Shapes: H heads, Tq query length, Tk key length.

    Args:
        n_heads: number of query heads.
    """

    def __init__(self, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        # A plain list, not a buffer: a buffer would be rounded by model.to(torch.bfloat16).
        self.slopes = alibi_slopes(n_heads)

    def attention_bias(
        self,
        q_len: int,
        k_len: int,
        q_offset: int,
        causal: bool,
        device: torch.device,
        dtype: torch.dtype,
    ) -> Tensor:
        """Additive bias ``(1, H, Tq, Tk)`` in ``dtype``; query i sits at key ``q_offset + i``."""
        query_pos = torch.arange(q_len, device=device)[:, None] + q_offset  # (Tq, 1)
        key_pos = torch.arange(k_len, device=device)[None, :]  # (1, Tk)
        distance = (query_pos - key_pos).float()  # (Tq, Tk): i - j
        if not causal:
            distance = distance.abs()
        slopes = alibi_slope_tensor(self.n_heads, device)  # (H,), equal to self.slopes
        bias = -slopes[:, None, None] * distance  # (H, Tq, Tk)
        return bias.unsqueeze(0).to(dtype)

    def extra_repr(self) -> str:
        return f"n_heads={self.n_heads}"
