"""Built-in mask strategies.

``none``, ``causal``, ``sliding_window``, ``prefix_lm`` and ``block_diagonal``.

Each factory takes its validated config and returns a
:class:`~txblocks.attention.strategies.MaskStrategy`.
"""

from __future__ import annotations

from pydantic import Field

from txblocks.attention.strategies import (
    BlockDiagonalStrategy,
    CausalStrategy,
    FullStrategy,
    PrefixLMStrategy,
    SlidingWindowStrategy,
)
from txblocks.registry import ComponentConfig, Registry

__all__ = [
    "BlockDiagonalConfig",
    "CausalConfig",
    "NoneMaskConfig",
    "PrefixLMConfig",
    "SlidingWindowConfig",
    "register",
]


class NoneMaskConfig(ComponentConfig):
    """No structure: every query sees every non-padded key."""


class CausalConfig(ComponentConfig):
    """Causal: each query sees itself and earlier keys."""


class SlidingWindowConfig(ComponentConfig):
    """Causal within a window of the most recent keys (Mistral, Longformer)."""

    window: int = Field(
        ge=1, description="keys each query sees, its own included: p - window < j <= p"
    )


class PrefixLMConfig(ComponentConfig):
    """Bidirectional over a prefix, causal after it (T5 prefix LM, UniLM)."""

    length: int = Field(
        0, ge=0, description="prefix length used when a call gives no per-row prefix_lengths"
    )


class BlockDiagonalConfig(ComponentConfig):
    """Packed sequences attend only within themselves."""

    causal: bool = Field(True, description="whether each packed sequence is causal")


def none(config: NoneMaskConfig) -> FullStrategy:
    """No mask: every query sees every non-padded key (encoders, cross-attention)."""
    return FullStrategy()


def causal(config: CausalConfig) -> CausalStrategy:
    """Causal mask: each query sees itself and earlier keys (decoders)."""
    return CausalStrategy()


def sliding_window(config: SlidingWindowConfig) -> SlidingWindowStrategy:
    """Sliding-window causal mask: the `window` most recent keys, own included (Mistral)."""
    return SlidingWindowStrategy(config.window)


def prefix_lm(config: PrefixLMConfig) -> PrefixLMStrategy:
    """Prefix-LM mask: bidirectional over a prefix, causal after it (T5, UniLM)."""
    return PrefixLMStrategy(config.length)


def block_diagonal(config: BlockDiagonalConfig) -> BlockDiagonalStrategy:
    """Block-diagonal mask: packed sequences attend only within themselves."""
    return BlockDiagonalStrategy(config.causal)


def register(registry: Registry) -> None:
    """Register the built-in mask strategies (kind ``mask``)."""
    registry.add("mask", "none", none, NoneMaskConfig)
    registry.add("mask", "causal", causal, CausalConfig)
    registry.add("mask", "sliding_window", sliding_window, SlidingWindowConfig)
    registry.add("mask", "prefix_lm", prefix_lm, PrefixLMConfig)
    registry.add("mask", "block_diagonal", block_diagonal, BlockDiagonalConfig)
