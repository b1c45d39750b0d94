"""The positional-scheme contract: three places where a position can act."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class PositionalScheme(nn.Module):
    """Base class of positional schemes. Every hook is a no-op by default.

    Shapes: B batch, T time, H heads, D head_dim, Tq/Tk query/key lengths.

    A scheme acts at one or more of three points:

    * :meth:`embed` — added to the token embeddings (sinusoidal, learned);
    * :meth:`rotary` / :meth:`rotate` — rotating q and k (RoPE);
    * :meth:`attention_bias` — an additive attention bias (ALiBi, T5 buckets).
    """

    def embed(self, position_ids: Tensor) -> Tensor | None:
        """Position embeddings ``(B|1, T, d_model)`` for ``position_ids (B|1, T)``, or None."""
        return None

    def rotary(self, position_ids: Tensor) -> Any | None:
        """Per-forward state for :meth:`rotate` (e.g. cos/sin tables), or None."""
        return None

    def rotate(self, x: Tensor, rotary: Any) -> Tensor:
        """Rotate ``x (B, T, H, D)`` (queries or new keys) by the state from :meth:`rotary`."""
        return x

    def attention_bias(
        self,
        q_len: int,
        k_len: int,
        q_offset: int,
        causal: bool,
        device: torch.device,
        dtype: torch.dtype,
    ) -> Tensor | None:
        """Additive bias ``(1, H, Tq, Tk)``; query i sits at key position ``q_offset + i``."""
        return None
