"""The txblocks plugin: attention kernel ``lsh`` (Reformer).

Registered through the ``txblocks`` entry point of the ``txblocks-lsh`` distribution.
"""

from __future__ import annotations

from pydantic import Field, field_validator

import txblocks
from txblocks_lsh.kernel import LSHKernel

__all__ = ["LSHConfig", "txblocks_register"]


class LSHConfig(txblocks.ComponentConfig):
    """Reformer LSH attention: hash into buckets, sort, attend within chunks (Kitaev 2020)."""

    n_buckets: int | None = Field(
        None, ge=1, description="buckets per round, 1 or even; default about Tk / chunk"
    )
    n_hashes: int = Field(2, ge=1, description="hash rounds combined by their logsumexp")
    chunk: int = Field(64, ge=1, description="sorted keys per chunk; a query reads 2 chunks")
    seed: int = Field(0, ge=0, description="seed of the random rotations")

    @field_validator("n_buckets")
    @classmethod
    def _even(cls, value: int | None) -> int | None:
        if value is not None and value > 1 and value % 2:
            raise ValueError(f"n_buckets must be 1 or even (argmax over [xR; -xR]), got "
                             f"{value}; use {value - 1} or {value + 1}")
        return value


def lsh(config: LSHConfig) -> LSHKernel:
    """Reformer LSH attention, O(T): unmasked, causal or sliding window, with key padding."""
    return LSHKernel(config.n_buckets, n_hashes=config.n_hashes, chunk=config.chunk,
                     seed=config.seed)


@txblocks.hookimpl
def txblocks_register(registry: txblocks.Registry) -> None:
    """Register attention kernel ``lsh``."""
    registry.add("attention", "lsh", lsh, LSHConfig)
