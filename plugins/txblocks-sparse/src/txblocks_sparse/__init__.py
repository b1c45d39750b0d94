"""txblocks-sparse: Longformer and BigBird masks and a block-sparse attention kernel."""

from txblocks_sparse.bigbird import BigBirdMask, BigBirdStrategy, draw_random_blocks
from txblocks_sparse.kernel import BlockSparseKernel, block_sparse_attention
from txblocks_sparse.layout import BlockLayout, BlockSparseMask, SupportsBlocks, supports_blocks
from txblocks_sparse.longformer import LongformerMask, LongformerStrategy

__version__ = "0.1.0"

__all__ = [
    "BigBirdMask",
    "BigBirdStrategy",
    "BlockLayout",
    "BlockSparseKernel",
    "BlockSparseMask",
    "LongformerMask",
    "LongformerStrategy",
    "SupportsBlocks",
    "block_sparse_attention",
    "draw_random_blocks",
    "supports_blocks",
]
