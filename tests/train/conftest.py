"""Tiny specs of every arch, sized for the built-in tasks, for fast training tests."""

from __future__ import annotations

from typing import Any

import pytest

BLOCK = {"norm": "layernorm", "ffn": {"type": "mlp", "hidden": 128}}


def tiny(arch: str, **changes: Any) -> dict[str, Any]:
    """A spec dict of ``arch`` small enough to train a few dozen steps in about a second."""
    spec: dict[str, Any] = {"arch": arch, "name": f"tiny-{arch}", "d_model": 32, "n_layers": 2,
                            "n_heads": 4, "block": BLOCK}
    if arch != "vit":
        spec.update(vocab_size=128, max_seq_len=32)
    if arch == "encoder":
        spec["head"] = {"type": "classifier", "n_classes": 2}
    if arch == "vit":
        spec.update(image_size=8, patch_size=2, channels=1,
                    head={"type": "classifier", "n_classes": 4})
    spec.update(changes)
    return spec


@pytest.fixture
def quiet():
    """A console that prints nowhere."""
    from rich.console import Console

    return Console(quiet=True)
