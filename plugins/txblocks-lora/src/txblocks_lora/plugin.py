"""The txblocks plugin: registers ``adapter`` ``lora`` and applies it after build.

Named by the distribution's entry point::

    [project.entry-points.txblocks]
    lora = "txblocks_lora.plugin"
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import txblocks
from torch import nn

from txblocks_lora.apply import apply_lora
from txblocks_lora.config import LoRAConfig

if TYPE_CHECKING:
    from txblocks import ModelSpec, Registry

__all__ = ["LoRAApplier", "txblocks_after_build", "txblocks_register"]


class LoRAApplier:
    """The registered factory's product: ``LoRAApplier(config)(model)`` applies the adapter.

    ``txblocks.build`` does not call it (the ``txblocks_after_build`` hook applies
    ``spec.adapters``); it lets ``registry.config("adapter", "lora", rank=4).build()``
    give something useful.
    """

    def __init__(self, config: LoRAConfig) -> None:
        self.config = config

    def __call__(self, model: nn.Module) -> list[str]:
        """Apply to ``model`` in place; returns the wrapped module names."""
        return apply_lora(model, self.config)

    def __repr__(self) -> str:
        return f"LoRAApplier({self.config!r})"


@txblocks.hookimpl
def txblocks_register(registry: Registry) -> None:
    """Register the ``lora`` adapter."""
    registry.add("adapter", "lora", LoRAApplier, LoRAConfig)


@txblocks.hookimpl
def txblocks_after_build(model: nn.Module, spec: ModelSpec) -> None:
    """Apply every ``{type: lora, ...}`` of ``spec.adapters``, in order."""
    for i, adapter in enumerate(spec.adapters):
        if getattr(adapter, "type", None) == "lora" and isinstance(adapter, LoRAConfig):
            apply_lora(model, adapter, where=f"adapters[{i}]", record=False)
