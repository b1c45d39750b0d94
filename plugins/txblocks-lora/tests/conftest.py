"""Fixtures for txblocks-lora's tests: tiny specs, random seeds printed on failure."""

from __future__ import annotations

import pytest
import torch
from txblocks.plugins import AUTOLOAD_ENV, default_registry


@pytest.fixture
def tiny() -> dict:
    """A tiny decoder spec: d_model 32, 2 layers, 4 heads, mlp hidden 128, fused qkv."""
    return {
        "arch": "decoder", "vocab_size": 61, "max_seq_len": 16, "d_model": 32, "n_layers": 2,
        "n_heads": 4,
    }


@pytest.fixture
def seed() -> int:
    """A fresh seed per test, printed on failure."""
    value = torch.seed() % (2**31)
    print(f"seed={value}")
    return value


@pytest.fixture
def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def ids(gen: torch.Generator) -> torch.Tensor:
    """Random token ids (2, 9) below vocab_size 61."""
    return torch.randint(0, 61, (2, 9), generator=gen)


@pytest.fixture
def fresh_default_registry(monkeypatch):
    """``txblocks.default_registry()`` rebuilt from the installed entry points, forgotten after."""
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    default_registry.cache_clear()
    yield
    default_registry.cache_clear()
