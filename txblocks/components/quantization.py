"""Built-in quantization modes: ``int8_weight_only`` and ``int8_dynamic`` (torchao).

A ``quantization`` factory is called as ``factory(model, config)`` and quantizes the model's
layers in place; see :mod:`txblocks.quantize`. Registering them imports nothing from torchao.
"""

from __future__ import annotations

from torch import nn

from txblocks.quantize import torchao_int8
from txblocks.registry import ComponentConfig, Registry


class Int8WeightOnly(ComponentConfig):
    """int8 weights (one scale per output channel), float activations; torchao."""


class Int8Dynamic(ComponentConfig):
    """int8 weights and int8 activations quantized per token at run time; torchao."""


def int8_weight_only(model: nn.Module, config: Int8WeightOnly) -> None:
    """Every ``nn.Linear`` weight to per-channel symmetric int8 (torchao Int8WeightOnlyConfig)."""
    torchao_int8(model, dynamic=False)


def int8_dynamic(model: nn.Module, config: Int8Dynamic) -> None:
    """int8 weights, per-token int8 activations (torchao Int8DynamicActivationInt8WeightConfig)."""
    torchao_int8(model, dynamic=True)


def register(registry: Registry) -> None:
    """Register the built-in quantization modes."""
    registry.add("quantization", "int8_weight_only", int8_weight_only, Int8WeightOnly)
    registry.add("quantization", "int8_dynamic", int8_dynamic, Int8Dynamic)
