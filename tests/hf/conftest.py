"""Shared by the Hugging Face conversion tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def perturbed(factory: Callable[[], Any]) -> Any:
    """``factory()``'s HF model (seed 0) with every parameter moved off its init (biases not 0,
    norms not 1), in eval mode."""
    torch.manual_seed(0)
    model = factory()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()
