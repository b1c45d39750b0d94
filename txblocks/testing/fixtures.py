"""pytest fixtures for a plugin's own tests: fresh random seeds and a fresh default registry.

Import the ones you use into your ``tests/conftest.py``::

    from txblocks.testing.fixtures import fresh_default_registry, gen, one_thread  # noqa: F401

The first-party plugins in ``plugins/`` do exactly that.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from txblocks.plugins import AUTOLOAD_ENV, default_registry

__all__ = ["fresh_default_registry", "gen", "one_thread"]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread for the test (tiny tensors: more threads only oversubscribe a busy
    CPU), restored after it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def gen() -> torch.Generator:
    """A generator with a fresh seed per test; the seed is printed, so a failure shows it."""
    seed = torch.seed() % (2**31)
    print(f"seed={seed}")
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def fresh_default_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Plugins autoloaded, and ``txblocks.default_registry()`` rebuilt from the installed entry
    points for the test and forgotten after it."""
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    default_registry.cache_clear()
    yield
    default_registry.cache_clear()
