"""Shared fixtures: a fresh registry per test, reproducible random inputs."""

from __future__ import annotations

import pytest
import torch

from txblocks.plugins import load_registry

# Tests use tiny tensors; with 2 cores shared by 2 xdist workers, one thread each avoids
# oversubscription (tiny ops run tens of times slower when threads fight).
torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def registry():
    """A registry of the built-ins only, new for each test."""
    return load_registry(autoload=False)


@pytest.fixture
def gen() -> torch.Generator:
    """A generator with a fresh seed per test, printed on failure."""
    g = torch.Generator()
    seed = torch.seed() % (2**31)
    g.manual_seed(seed)
    print(f"seed={seed}")
    return g
