"""Loading plugins: the pluggy manager over the ``txblocks`` entry-point group."""

from __future__ import annotations

import functools
import importlib
import os
import warnings
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType

import pluggy

from txblocks import hookspecs
from txblocks.errors import RegistryError, TxblocksPluginWarning
from txblocks.registry import Owner, Registry

__all__ = [
    "AUTOLOAD_ENV",
    "ENTRY_POINT_GROUP",
    "default_registry",
    "load_registry",
    "plugin_manager",
]

ENTRY_POINT_GROUP = "txblocks"
AUTOLOAD_ENV = "TXBLOCKS_DISABLE_PLUGIN_AUTOLOAD"
BUILTINS = "txblocks.components"
_SELF = Owner("txblocks")


def plugin_manager() -> pluggy.PluginManager:
    """A fresh pluggy manager that knows txblocks' hookspecs."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def _autoload_disabled() -> bool:
    return os.environ.get(AUTOLOAD_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _owner_of(ep: EntryPoint) -> Owner:
    dist = ep.dist
    return Owner(dist.metadata["Name"], dist.version) if dist is not None else Owner(ep.value)


def _load_entry_point(ep: EntryPoint) -> ModuleType | None:
    try:
        return ep.load()
    except Exception as exc:  # a broken plugin must not take the others down
        warnings.warn(
            f"txblocks plugin {ep.name!r} ({ep.value}, from {_owner_of(ep)}) failed to load "
            f"and was skipped: {type(exc).__name__}: {exc}",
            TxblocksPluginWarning,
            stacklevel=3,
        )
        return None


def load_registry(
    *,
    autoload: bool | None = None,
    plugins: list[object] | None = None,
) -> Registry:
    """Build a new registry from txblocks' built-ins and plugins.

    Args:
        autoload: load every ``txblocks`` entry point. Defaults to on, unless the
            environment sets ``TXBLOCKS_DISABLE_PLUGIN_AUTOLOAD=1`` (built-ins only).
        plugins: extra plugin objects (modules or instances with hook
            implementations) registered explicitly, after the entry points.

    Returns:
        A registry owned by the caller; nothing is shared with other registries.

    Raises:
        RegistryError: two plugins registered the same kind and name.
    """
    if autoload is None:
        autoload = not _autoload_disabled()
    pm = plugin_manager()
    owners: dict[int, Owner] = {}

    found_builtins = False
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        owner = _owner_of(ep)
        is_builtin = ep.value == BUILTINS
        if not (autoload or is_builtin) or (is_builtin and found_builtins):
            continue
        module = _load_entry_point(ep)
        if module is None or pm.is_registered(module):
            continue
        pm.register(module, name=f"{owner.name}:{ep.name}")
        owners[id(module)] = owner
        found_builtins |= is_builtin
    if not found_builtins:  # running from a source tree that was never installed
        module = importlib.import_module(BUILTINS)
        pm.register(module, name="txblocks:builtins")
        owners[id(module)] = _SELF
    for plugin in plugins or []:
        pm.register(plugin)
        name = getattr(plugin, "__name__", type(plugin).__name__)
        owners[id(plugin)] = Owner(name)

    registry = Registry()
    registry.plugin_manager = pm
    # pluggy calls implementations last-registered-first; the built-ins must come first.
    for impl in reversed(pm.hook.txblocks_register.get_hookimpls()):
        owner = owners.get(id(impl.plugin), Owner(impl.plugin_name))
        before = registry.snapshot()
        try:
            with registry.owned_by(owner):
                impl.function(registry=registry)
        except RegistryError:
            raise
        except Exception as exc:
            registry.restore(before)
            warnings.warn(
                f"txblocks plugin {impl.plugin_name!r} ({owner}) raised in txblocks_register "
                f"and was skipped: {type(exc).__name__}: {exc}",
                TxblocksPluginWarning,
                stacklevel=2,
            )
    return registry


@functools.cache
def default_registry() -> Registry:
    """The registry of the installed built-ins and plugins, built once per process."""
    return load_registry()
