"""txblocks-lsh: Reformer's LSH attention kernel for txblocks."""

from txblocks_lsh.attention import lsh_attention, met_keys
from txblocks_lsh.hashing import ChunkPlan, hash_buckets, plan_chunks, random_rotations
from txblocks_lsh.kernel import LSHKernel

__version__ = "0.1.0"

__all__ = [
    "ChunkPlan",
    "LSHKernel",
    "hash_buckets",
    "lsh_attention",
    "met_keys",
    "plan_chunks",
    "random_rotations",
]
