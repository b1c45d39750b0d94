"""The txblocks plugin: masks ``longformer`` and ``bigbird``, kernel ``block_sparse``.

Registered through the ``txblocks`` entry point of the ``txblocks-sparse`` distribution.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

import txblocks
from txblocks_sparse.bigbird import BigBirdStrategy
from txblocks_sparse.kernel import BlockSparseKernel
from txblocks_sparse.longformer import LongformerStrategy

__all__ = ["BigBirdConfig", "BlockSparseConfig", "LongformerConfig", "txblocks_register"]


class LongformerConfig(txblocks.ComponentConfig):
    """Longformer: sliding window plus global tokens (Beltagy et al. 2020)."""

    window: int = Field(
        ge=1,
        description="causal: keys p - window < j <= p; symmetric: |p - j| < window",
    )
    causal: bool = Field(False, description="no query sees a later key")
    global_positions: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=list,
        description="absolute positions of global tokens (attend to and are seen by all)",
    )
    global_prefix: bool = Field(
        False,
        description="also make the first prefix_lengths[b] tokens of each row global "
        "(prefix_lengths passed to the model's forward)",
    )
    block_size: int = Field(
        64, ge=1, description="tiling of the block_sparse kernel (does not change the mask)"
    )


class BigBirdConfig(txblocks.ComponentConfig):
    """BigBird: window, global and seeded random blocks (Zaheer et al. 2020)."""

    block_size: int = Field(64, ge=1, description="tokens per block")
    window_blocks: int = Field(
        3, ge=1, description="odd number of window blocks, the query's own block included"
    )
    global_blocks: int = Field(1, ge=0, description="leading blocks that are global")
    random_blocks: int = Field(3, ge=0, description="random key blocks per query block")
    seed: int = Field(0, ge=0, description="seed of the random blocks (same seed, same pattern)")
    causal: bool = Field(False, description="no query sees a later key")

    @field_validator("window_blocks")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError(f"window_blocks must be odd (the own block plus as many on each "
                             f"side), got {value}; use {value - 1} or {value + 1}")
        return value


class BlockSparseConfig(txblocks.ComponentConfig):
    """Attention over the active blocks of a longformer/bigbird mask only; no parameters."""


def longformer(config: LongformerConfig) -> LongformerStrategy:
    """Longformer mask: sliding window (symmetric or causal) plus global tokens."""
    return LongformerStrategy(
        config.window, causal=config.causal, global_positions=config.global_positions,
        global_prefix=config.global_prefix, block_size=config.block_size,
    )


def bigbird(config: BigBirdConfig) -> BigBirdStrategy:
    """BigBird mask: window, global and random blocks."""
    return BigBirdStrategy(
        config.block_size, window_blocks=config.window_blocks,
        global_blocks=config.global_blocks, random_blocks=config.random_blocks,
        seed=config.seed, causal=config.causal,
    )


def block_sparse(config: BlockSparseConfig) -> BlockSparseKernel:
    """Block-sparse attention: only the active blocks of a longformer/bigbird mask."""
    return BlockSparseKernel()


@txblocks.hookimpl
def txblocks_register(registry: txblocks.Registry) -> None:
    """Register masks ``longformer``, ``bigbird`` and kernel ``block_sparse``."""
    registry.add("mask", "longformer", longformer, LongformerConfig)
    registry.add("mask", "bigbird", bigbird, BigBirdConfig)
    registry.add("attention", "block_sparse", block_sparse, BlockSparseConfig)
