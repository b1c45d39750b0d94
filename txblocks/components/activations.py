"""Built-in activations: relu, gelu, gelu_tanh, silu, quick_gelu."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from txblocks.nn.activations import QuickGELU
from txblocks.registry import ComponentConfig, Registry


class ActivationConfig(ComponentConfig):
    """An activation without parameters."""


_ACTIVATIONS: dict[str, tuple[Callable[[], nn.Module], str]] = {
    "relu": (nn.ReLU, "max(0, x)"),
    "gelu": (nn.GELU, "GELU with the exact erf (Hendrycks & Gimpel 2016)"),
    "gelu_tanh": (lambda: nn.GELU(approximate="tanh"), "GELU, tanh approximation (GPT-2)"),
    "silu": (nn.SiLU, "SiLU / swish: x · sigmoid(x)"),
    "quick_gelu": (QuickGELU, "x · sigmoid(1.702 x) (CLIP)"),
}


def _factory(make: Callable[[], nn.Module]) -> Callable[[ActivationConfig], nn.Module]:
    def factory(config: ActivationConfig) -> nn.Module:
        return make()

    return factory


def register(registry: Registry) -> None:
    """Register the built-in activations."""
    for name, (make, description) in _ACTIVATIONS.items():
        registry.add("activation", name, _factory(make), ActivationConfig, description=description)
