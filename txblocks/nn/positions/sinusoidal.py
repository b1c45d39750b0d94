"""Fixed sinusoidal position embeddings (Vaswani et al. 2017, section 3.5)."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from txblocks.nn.positional import PositionalScheme

__all__ = ["SinusoidalLayout", "SinusoidalPositions", "sinusoidal_table"]

#: Where the sines and cosines go: alternating columns (the paper), or all sines then all
#: cosines (Hugging Face's Marian and Pegasus, fairseq).
SinusoidalLayout = Literal["interleaved", "half"]


def sinusoidal_table(
    positions: Tensor, d_model: int, base: float = 10000.0, layout: SinusoidalLayout = "interleaved"
) -> Tensor:
    """The sinusoid of "Attention Is All You Need", interleaved as in the paper or in halves.

    With ``angle(pos, i) = pos / base^(2i/d_model)``:

    * ``interleaved``: ``PE(pos, 2i) = sin(angle(pos, i))``,
      ``PE(pos, 2i+1) = cos(angle(pos, i))``. With an odd ``d_model`` the last column is the
      sine of the last frequency.
    * ``half``: columns ``0 .. h-1`` hold ``sin(angle(pos, i))`` and columns ``h .. d-1``
      hold ``cos(angle(pos, i))``, ``h = ceil(d_model / 2)`` (Hugging Face's
      ``MarianSinusoidalPositionalEmbedding`` / ``PegasusSinusoidalPositionalEmbedding``:
      the same frequencies, the cosines in the second half; with an odd ``d_model`` the
      last frequency has a sine only).

    Computed in float64 (float32 where the device has no float64, e.g. MPS).

    Args:
        positions: integer positions, any shape ``(...)``.
        d_model: width of the embedding.
        base: the wavelength base (10000 in the paper).
        layout: ``interleaved`` or ``half``.

    Returns:
        Tensor ``(..., d_model)`` in float64 (or float32).
    """
    dtype = torch.float32 if positions.device.type == "mps" else torch.float64
    two_i = torch.arange(0, d_model, 2, dtype=dtype, device=positions.device)  # (ceil(d/2),)
    inv_freq = torch.exp(two_i * (-math.log(base) / d_model))  # 1 / base^(2i/d)
    angles = positions.to(dtype)[..., None] * inv_freq  # (..., ceil(d/2))
    if layout == "half":  # sin of every frequency, then cos of the first floor(d/2)
        return torch.cat((angles.sin(), angles[..., : d_model // 2].cos()), dim=-1)
    table = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)  # sin, cos, sin, ...
    return table[..., :d_model]


class SinusoidalPositions(PositionalScheme):
    """Fixed sinusoidal embeddings added to the tokens (Vaswani et al. 2017, eq. in §3.5).

    ``PE(pos, 2i) = sin(pos / 10000^(2i/d))``, ``PE(pos, 2i+1) = cos(pos / 10000^(2i/d))``:
    even columns hold sines, odd columns cosines, as in the paper; ``layout="half"`` puts
    all the sines first and all the cosines after them, as Hugging Face's Marian and
    Pegasus do (see :func:`sinusoidal_table`).

    The first ``max_seq_len`` rows are precomputed in a non-persistent buffer (so the table
    follows ``module.to(device, dtype)`` and never enters a checkpoint); later positions are
    computed on the fly.

    Shapes: B batch, T time, d d_model.

    Args:
        d_model: width of the embeddings.
        max_seq_len: rows to precompute.
        base: the wavelength base (10000 in the paper).
        layout: ``interleaved`` (the paper) or ``half`` (sines, then cosines).
    """

    def __init__(
        self,
        d_model: int,
        max_seq_len: int,
        base: float = 10000.0,
        layout: SinusoidalLayout = "interleaved",
    ) -> None:
        super().__init__()
        if layout not in ("interleaved", "half"):
            raise ValueError(f"layout {layout!r}; allowed: interleaved, half")
        self.d_model = d_model
        self.base = base
        self.layout = layout
        table = sinusoidal_table(torch.arange(max_seq_len), d_model, base, layout)
        self.table: Tensor
        self.register_buffer("table", table.to(torch.get_default_dtype()), persistent=False)

    def embed(self, position_ids: Tensor) -> Tensor:
        """Position embeddings ``(B|1, T, d)`` for ``position_ids (B|1, T)``, in the table dtype."""
        position_ids = position_ids.to(self.table.device)
        if torch.compiler.is_compiling():  # no data-dependent branch in a compiled graph
            table = sinusoidal_table(position_ids, self.d_model, self.base, self.layout)
            return table.to(self.table.dtype)
        if position_ids.numel():
            low, high = torch.aminmax(position_ids)
            if int(low) < 0 or int(high) >= self.table.shape[0]:  # outside the cache
                table = sinusoidal_table(position_ids, self.d_model, self.base, self.layout)
                return table.to(self.table.dtype)
        return torch.nn.functional.embedding(position_ids, self.table)

    def extra_repr(self) -> str:
        layout = "" if self.layout == "interleaved" else f", layout={self.layout}"
        return (f"d_model={self.d_model}, max_seq_len={self.table.shape[0]}, "
                f"base={self.base:g}{layout}")
