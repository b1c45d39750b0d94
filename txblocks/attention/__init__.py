"""Attention kernels and mask objects (spec-free; the registry wraps them)."""

from txblocks.attention.auto import AutoKernel
from txblocks.attention.eager import EagerKernel
from txblocks.attention.kernel import AttentionCall, AttentionKernel
from txblocks.attention.mask import (
    AttentionMask,
    BlockDiagonalMask,
    CausalMask,
    FullMask,
    PrefixLMMask,
)
from txblocks.attention.sdpa import SDPAKernel
from txblocks.attention.strategies import MaskStrategy
from txblocks.attention.xformers_kernel import XFormersKernel

__all__ = [
    "AttentionCall",
    "AttentionKernel",
    "AttentionMask",
    "AutoKernel",
    "BlockDiagonalMask",
    "CausalMask",
    "EagerKernel",
    "FullMask",
    "MaskStrategy",
    "PrefixLMMask",
    "SDPAKernel",
    "XFormersKernel",
]
