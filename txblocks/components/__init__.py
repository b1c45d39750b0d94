"""txblocks' built-in components, registered through txblocks' own entry point."""

from __future__ import annotations

from txblocks.components import (
    activations,
    attention,
    ffn,
    front_ends,
    heads,
    masks,
    moe,
    norms,
    positions,
    quantization,
)
from txblocks.hookspecs import hookimpl
from txblocks.registry import Registry

_MODULES = (activations, norms, ffn, attention, masks, positions, heads, moe, quantization,
            front_ends)


@hookimpl
def txblocks_register(registry: Registry) -> None:
    """Register every built-in component."""
    for module in _MODULES:
        module.register(registry)
