"""Fixtures for txblocks-sparse's tests: reproducible random inputs, a fresh default registry."""

from __future__ import annotations

import pytest
import torch

from txblocks.plugins import AUTOLOAD_ENV, default_registry


@pytest.fixture(autouse=True)
def one_thread():
    """The tensors here are tiny: one intra-op thread avoids oversubscribing a busy CPU
    (restored after each test, so other test directories keep theirs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def gen() -> torch.Generator:
    """A generator with a fresh seed per test, printed on failure."""
    seed = torch.seed() % (2**31)
    print(f"seed={seed}")
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def fresh_default_registry(monkeypatch):
    """Plugins autoloaded, and the cached default registry rebuilt around the test."""
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    default_registry.cache_clear()
    yield
    default_registry.cache_clear()
