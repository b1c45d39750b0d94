"""The positional-scheme contract: the places where a position can act."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from txblocks.nn.attention import Attention

__all__ = ["PositionalScheme", "has_score_bias"]


class PositionalScheme(nn.Module):
    """Base class of positional schemes. Every hook is a no-op by default.

    Shapes: B batch, T time, H heads, Hkv key/value heads, D head_dim, Tq/Tk query/key
    lengths.

    A scheme acts at one or more of four points:

    * :meth:`embed` — added to the token embeddings (sinusoidal, learned);
    * :meth:`rotary` / :meth:`rotate` — rotating q and k (RoPE);
    * :meth:`attention_bias` — an additive attention bias, a function of positions only
      (ALiBi, T5 buckets);
    * :meth:`score_bias` — an additive score term computed from each layer's q and k
      (DeBERTa's disentangled attention, He et al. 2021).
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

    def score_bias(
        self, q: Tensor, k: Tensor, attention: Attention, *, layer: int, q_offset: int
    ) -> Tensor | None:
        """An additive score term of one self-attention call, from its q and k, or None.

        Called by :class:`~txblocks.nn.attention.Attention` for every self-attention call
        of every layer (never for cross-attention), after q and k are projected, normed and
        rotated and the cached keys are prepended; the term is added to the mask's bias
        (summed with :meth:`attention_bias`), so every kernel runs it as a tensor bias. The
        stack calls it only when a scheme overrides it (:func:`has_score_bias`): the
        default costs nothing.

        Args:
            q: queries ``(B, Tq, H, D)``.
            k: keys ``(B, Tk, Hkv, D)``, cached ones included.
            attention: the layer's attention module (its projections ``project(x)``, its
                score ``scale``, ``n_heads``, ``n_kv_heads``, ``head_dim``).
            layer: the index of the layer in its stack (layers sharing one block still
                get their own index).
            q_offset: query i sits at key position ``q_offset + i``.

        Returns:
            ``(B|1, H|1, Tq, Tk)`` in post-scale units (added to ``q·kᵀ · scale``), in q's
            dtype, differentiable in q, k and the parameters it uses; or None.
        """
        return None


def has_score_bias(scheme: PositionalScheme) -> bool:
    """Whether ``scheme`` overrides :meth:`PositionalScheme.score_bias` (then the stack asks
    every layer's attention for the term)."""
    return type(scheme).score_bias is not PositionalScheme.score_bias
