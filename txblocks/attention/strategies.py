"""Mask strategies: the ``mask`` components, turning a call's shape into an AttentionMask.

Shapes: B batch, Tq query length, Tk key length.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from torch import Tensor

from txblocks.attention.mask import (
    AttentionMask,
    BlockDiagonalMask,
    CausalMask,
    FullMask,
    PrefixLMMask,
)

__all__ = [
    "BlockDiagonalStrategy",
    "CausalStrategy",
    "FullStrategy",
    "MaskStrategy",
    "PrefixLMStrategy",
    "SlidingWindowStrategy",
]

SeqLens = Sequence[Sequence[int]]


class MaskStrategy:
    """Turns (Tq, Tk, padding, packed lengths, cache offset) into one :class:`AttentionMask`.

    Attributes:
        name: the registry name of the strategy.
        causal: True when a query never sees a later key; positional schemes
            (T5 causal buckets) and generation read it.
        cache_window: when set, no later query ever sees a key more than this many
            positions back, so a KV cache keeps only the last ``cache_window`` keys (a
            rolling buffer). None (the default) keeps every key.
    """

    name: ClassVar[str] = ""
    causal: bool = False
    cache_window: int | None = None

    def __call__(
        self,
        q_len: int,
        k_len: int,
        *,
        key_padding: Tensor | None = None,
        q_offset: int | None = None,
        seq_lens: SeqLens | None = None,
        prefix_lengths: Tensor | Sequence[int] | None = None,
    ) -> AttentionMask:
        """Build the mask of one attention call.

        Args:
            q_len: Tq.
            k_len: Tk.
            key_padding: bool ``(B, Tk)``, True for real tokens.
            q_offset: absolute position of query 0; defaults to ``Tk - Tq``.
            seq_lens: per row, the lengths of packed sequences (summing to Tk).
                Strategies that never let a query cross a sequence boundary honour it.
            prefix_lengths: per row, the prefix length (``prefix_lm`` only; others
                ignore it).

        Returns:
            The mask object that kernels consume.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class FullStrategy(MaskStrategy):
    """Every query sees every key (``none``): encoders and cross-attention.

    With ``seq_lens`` the packed sequences stay apart (non-causal block-diagonal).
    """

    name = "none"
    causal = False

    def __call__(
        self,
        q_len: int,
        k_len: int,
        *,
        key_padding: Tensor | None = None,
        q_offset: int | None = None,
        seq_lens: SeqLens | None = None,
        prefix_lengths: Tensor | Sequence[int] | None = None,
    ) -> AttentionMask:
        common: dict[str, Any] = {"q_offset": q_offset, "key_padding": key_padding}
        if seq_lens is not None:
            return BlockDiagonalMask(q_len, k_len, **common, seq_lens=seq_lens, causal=False)
        return FullMask(q_len, k_len, **common)


class CausalStrategy(MaskStrategy):
    """Each query sees itself and earlier keys (decoders; Vaswani et al. 2017).

    With ``seq_lens`` the packed sequences stay apart (causal block-diagonal).
    """

    name = "causal"
    causal = True

    def __call__(
        self,
        q_len: int,
        k_len: int,
        *,
        key_padding: Tensor | None = None,
        q_offset: int | None = None,
        seq_lens: SeqLens | None = None,
        prefix_lengths: Tensor | Sequence[int] | None = None,
    ) -> AttentionMask:
        common: dict[str, Any] = {"q_offset": q_offset, "key_padding": key_padding}
        if seq_lens is not None:
            return BlockDiagonalMask(q_len, k_len, **common, seq_lens=seq_lens, causal=True)
        return CausalMask(q_len, k_len, **common)


class SlidingWindowStrategy(MaskStrategy):
    """Causal attention to the ``window`` most recent keys, the query's own included.

    Query p sees keys p - window < j <= p (Mistral 7B, Jiang et al. 2023;
    Longformer, Beltagy et al. 2020). With ``seq_lens`` the packed sequences stay apart.

    Args:
        window: number of keys each query sees, >= 1.
    """

    name = "sliding_window"
    causal = True

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError(f"sliding_window: window must be >= 1, got {window}")
        self.window = self.cache_window = window

    def __call__(
        self,
        q_len: int,
        k_len: int,
        *,
        key_padding: Tensor | None = None,
        q_offset: int | None = None,
        seq_lens: SeqLens | None = None,
        prefix_lengths: Tensor | Sequence[int] | None = None,
    ) -> AttentionMask:
        common: dict[str, Any] = {"q_offset": q_offset, "key_padding": key_padding}
        if seq_lens is not None:
            return BlockDiagonalMask(
                q_len, k_len, **common, seq_lens=seq_lens, causal=True, window=self.window
            )
        return CausalMask(q_len, k_len, **common, window=self.window)

    def __repr__(self) -> str:
        return f"SlidingWindowStrategy(window={self.window})"


class PrefixLMStrategy(MaskStrategy):
    """Bidirectional over a prefix, causal after it (T5 prefix LM, Raffel et al. 2020; UniLM).

    Args:
        length: the prefix length used when the call gives no per-row
            ``prefix_lengths``; 0 makes it plain causal.
    """

    name = "prefix_lm"
    causal = False  # prefix queries see later prefix keys

    def __init__(self, length: int = 0) -> None:
        if length < 0:
            raise ValueError(f"prefix_lm: length must be >= 0, got {length}")
        self.length = length

    def __call__(
        self,
        q_len: int,
        k_len: int,
        *,
        key_padding: Tensor | None = None,
        q_offset: int | None = None,
        seq_lens: SeqLens | None = None,
        prefix_lengths: Tensor | Sequence[int] | None = None,
    ) -> AttentionMask:
        common: dict[str, Any] = {"q_offset": q_offset, "key_padding": key_padding}
        if seq_lens is not None:
            raise ValueError(
                "prefix_lm does not support packed sequences (seq_lens); "
                "use mask 'block_diagonal' or unpack the batch"
            )
        if prefix_lengths is None and self.length == 0:
            return CausalMask(q_len, k_len, **common)
        lengths = self.length if prefix_lengths is None else prefix_lengths
        return PrefixLMMask(q_len, k_len, **common, prefix_lengths=lengths)

    def __repr__(self) -> str:
        return f"PrefixLMStrategy(length={self.length})"


class BlockDiagonalStrategy(MaskStrategy):
    """Packed sequences attend only within themselves (causal or not).

    Without ``seq_lens`` each row is one sequence. Krell et al. 2021, "Efficient
    Sequence Packing without Cross-contamination".

    Args:
        causal: whether each packed sequence is causal.
    """

    name = "block_diagonal"

    def __init__(self, causal: bool = True) -> None:
        self.causal = causal

    def __call__(
        self,
        q_len: int,
        k_len: int,
        *,
        key_padding: Tensor | None = None,
        q_offset: int | None = None,
        seq_lens: SeqLens | None = None,
        prefix_lengths: Tensor | Sequence[int] | None = None,
    ) -> AttentionMask:
        common: dict[str, Any] = {"q_offset": q_offset, "key_padding": key_padding}
        if seq_lens is None:
            mask_cls = CausalMask if self.causal else FullMask
            return mask_cls(q_len, k_len, **common)
        return BlockDiagonalMask(q_len, k_len, **common, seq_lens=seq_lens, causal=self.causal)

    def __repr__(self) -> str:
        return f"BlockDiagonalStrategy(causal={self.causal})"
