"""Fixtures for txblocks-deberta's tests: the plugin kit's (fresh seeds, a fresh default registry)."""

from txblocks.testing.fixtures import fresh_default_registry, gen, one_thread  # noqa: F401
