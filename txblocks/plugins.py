"""Loading plugins: the pluggy manager over the ``txblocks`` entry-point group.

A broken installed plugin never breaks txblocks: it is skipped, named in a
:class:`txblocks.TxblocksPluginWarning`, and everything else loads. What happened
to each plugin is kept on the registry; :func:`plugin_status` returns it.
"""

from __future__ import annotations

import functools
import importlib
import os
import time
import warnings
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Literal

import pluggy

from txblocks import hookspecs
from txblocks.errors import PluginError, RegistryError, TxblocksPluginWarning, did_you_mean
from txblocks.registry import Entry, Owner, Registry

__all__ = [
    "AUTOLOAD_ENV",
    "ENTRY_POINT_GROUP",
    "PluginStatus",
    "default_registry",
    "load_registry",
    "plugin_manager",
    "plugin_status",
]

ENTRY_POINT_GROUP = "txblocks"
AUTOLOAD_ENV = "TXBLOCKS_DISABLE_PLUGIN_AUTOLOAD"
BUILTINS = "txblocks.components"
_SELF = Owner("txblocks")
_HOOKS = tuple(sorted(n for n in vars(hookspecs) if n.startswith("txblocks_")))


@dataclass(frozen=True)
class PluginStatus:
    """What happened to one plugin while a registry was loaded.

    Attributes:
        name: the entry-point name (``scalenorm``), or the module's name for a plugin
            passed to :func:`load_registry` explicitly.
        distribution: the distribution that declares it, with its version
            (``txblocks-scalenorm 0.1``).
        status: ``loaded``; ``skipped`` (broken: see ``reason``); or ``disabled``
            (not imported because autoload is off).
        reason: why it was skipped or disabled; empty when loaded (or a remark, such as
            an explicit plugin that added no component).
        import_seconds: time spent importing its module in this call (0 when it was
            already imported, or passed in as an object).
        target: the module it points at (``txblocks_scalenorm.plugin``).
        components: ``kind/name`` of each component it added or overrode.
    """

    name: str
    distribution: str
    status: Literal["loaded", "skipped", "disabled"]
    reason: str = ""
    import_seconds: float = 0.0
    target: str = ""
    components: tuple[str, ...] = ()

    def __str__(self) -> str:
        what = f"{self.status}: {self.reason}" if self.reason else self.status
        return f"{self.name} ({self.distribution}): {what}"


def plugin_status(registry: Registry) -> list[PluginStatus]:
    """Each plugin seen while ``registry`` was loaded, built-ins first, in load order.

    For ``txblocks doctor``-style reports: a registry built by hand (``Registry()``)
    has none.
    """
    return list(registry.plugin_statuses)


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


@dataclass
class _Candidate:
    """A plugin on its way into the registry."""

    name: str
    owner: Owner
    target: str
    plugin: Any = None
    explicit: bool = False  # passed to load_registry(plugins=...) from Python
    import_seconds: float = 0.0
    components: tuple[str, ...] = field(default=())
    status: PluginStatus | None = None

    def label(self) -> str:
        where = f"{self.target}, from {self.owner}" if self.target != self.name else f"from {self.owner}"
        return f"txblocks plugin {self.name!r} ({where})"


class _Loader:
    """Registers candidates one by one; each failure skips one plugin (or raises, if strict)."""

    def __init__(self, registry: Registry, pm: pluggy.PluginManager, strict: bool) -> None:
        self.registry, self.pm, self.strict = registry, pm, strict

    def record(self, c: _Candidate, status: Literal["loaded", "skipped", "disabled"],
               reason: str = "") -> None:
        c.status = PluginStatus(c.name, str(c.owner), status, reason, c.import_seconds, c.target,
                                c.components)

    def skip(self, c: _Candidate, what: str, reason: str) -> None:
        """Leave ``c`` out: a warning for an installed plugin, an error for an explicit one."""
        if c.plugin is not None and self.pm.is_registered(c.plugin):
            self.pm.unregister(c.plugin)  # none of its hooks may run (txblocks_after_build)
        self.record(c, "skipped", reason)
        message = f"{c.label()} {what}: {reason}"
        if c.explicit or self.strict:
            raise PluginError(message)
        warnings.warn(message, TxblocksPluginWarning, stacklevel=4)

    def load(self, c: _Candidate, ep: EntryPoint) -> bool:
        start = time.perf_counter()
        try:
            c.plugin = ep.load()
        except Exception as exc:  # a broken plugin must not take the others down
            c.import_seconds = time.perf_counter() - start
            self.skip(c, "failed to load and was skipped", f"{type(exc).__name__}: {exc}")
            return False
        c.import_seconds = time.perf_counter() - start
        return True

    def register(self, c: _Candidate) -> bool:
        """Add ``c`` to the plugin manager if its hooks match the hookspecs."""
        try:
            self.pm.register(c.plugin, name=f"{c.owner.name}:{c.name}")
        except pluggy.PluginValidationError as exc:
            detail = "; ".join(line.strip() for line in str(exc).splitlines()[1:] if line.strip())
            self.skip(c, "was skipped", f"a hook does not match txblocks' hookspecs: {detail}")
            return False
        except ValueError as exc:  # pluggy: this name or object is registered already
            self.skip(c, "was skipped", str(exc))
            return False
        callers = self.pm.get_hookcallers(c.plugin) or []
        unknown = [
            hc.name for hc in callers
            if hc.spec is None and not any(i.optionalhook for i in hc.get_hookimpls() if i.plugin is c.plugin)
        ]
        if unknown:
            hooks = "; ".join(f"{name!r}{did_you_mean(name, _HOOKS)}" for name in unknown)
            self.skip(c, "was skipped", f"it implements unknown hook {hooks}; txblocks' hooks are "
                      f"{', '.join(_HOOKS)} (mark a hook from a newer txblocks with "
                      "@txblocks.hookimpl(optionalhook=True))")
            return False
        if not callers:
            undecorated = [n for n in _HOOKS if callable(getattr(c.plugin, n, None))]
            hint = (f"{', '.join(undecorated)} is not decorated with @txblocks.hookimpl" if undecorated
                    else f"it defines none of {', '.join(_HOOKS)} with @txblocks.hookimpl")
            self.skip(c, "was skipped", f"it implements no txblocks hook: {hint}")
            return False
        return True

    def run_register_hook(self, c: _Candidate) -> None:
        """Call ``c``'s ``txblocks_register``; on any error undo what it added and skip it."""
        impls = [i for i in self.pm.hook.txblocks_register.get_hookimpls() if i.plugin is c.plugin]
        before = self.registry.snapshot()
        try:
            with self.registry.owned_by(c.owner):
                for impl in impls:
                    impl.function(**{arg: self.registry for arg in impl.argnames})
        except Exception as exc:
            self.registry.restore(before)
            if isinstance(exc, RegistryError):  # duplicate, bad name, bad config: says it all
                self.skip(c, "was skipped", str(exc))
            else:
                self.skip(c, "raised in txblocks_register and was skipped",
                          f"{type(exc).__name__}: {exc}")
            return
        c.components = _changes(before, self.registry.snapshot())
        only_registers = len(self.pm.get_hookcallers(c.plugin) or []) == 1 and impls
        if c.explicit and only_registers and not c.components:
            # Not broken (it may add components only on some machines), but worth saying.
            reason = "its txblocks_register added no component"
            warnings.warn(f"{c.label()} was loaded, but {reason}", TxblocksPluginWarning, stacklevel=4)
            self.record(c, "loaded", reason)
            return
        self.record(c, "loaded")


def _changes(before: dict[str, dict[str, Entry]], after: dict[str, dict[str, Entry]]) -> tuple[str, ...]:
    return tuple(
        f"{kind}/{name}" for kind, entries in after.items() for name, entry in entries.items()
        if before.get(kind, {}).get(name) is not entry
    )


def load_registry(
    *,
    autoload: bool | None = None,
    plugins: list[object] | None = None,
    strict: bool = False,
) -> Registry:
    """Build a new registry from txblocks' built-ins and plugins.

    Built-ins load first, then installed plugins in entry-point order, then
    ``plugins``. An installed plugin that fails to import, whose hooks do not match
    :mod:`txblocks.hookspecs` (a wrong argument, a misspelt hook name), that
    implements no hook, or whose ``txblocks_register`` raises (a duplicate name, an
    invalid name or config, any exception) is skipped with a
    :class:`txblocks.TxblocksPluginWarning` naming it, and whatever it added is undone;
    the rest loads. :func:`plugin_status` tells what happened to each plugin.

    Args:
        autoload: load every ``txblocks`` entry point. Defaults to on, unless the
            environment sets ``TXBLOCKS_DISABLE_PLUGIN_AUTOLOAD=1`` (built-ins only).
        plugins: extra plugin objects (modules or instances with hook
            implementations) registered explicitly, after the entry points. These are
            checked strictly: any of the problems above raises.
        strict: raise for a broken installed plugin too, instead of skipping it.

    Returns:
        A registry owned by the caller; nothing is shared with other registries.

    Raises:
        PluginError: a plugin in ``plugins`` is broken (or any plugin, with ``strict``);
            the message names the plugin and the problem (both owners for a duplicate).
    """
    if autoload is None:
        autoload = not _autoload_disabled()
    pm = plugin_manager()
    registry = Registry()
    registry.plugin_manager = pm
    loader = _Loader(registry, pm, strict)

    builtins: list[_Candidate] = []
    others: list[_Candidate] = []  # in entry-point order, then the explicit plugins
    disabled = f"autoload is off ({AUTOLOAD_ENV} is set)" if _autoload_disabled() else "autoload=False"
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        is_builtin = ep.value == BUILTINS
        if is_builtin and builtins:
            continue  # txblocks itself seen twice (an editable and a regular install)
        candidate = _Candidate(ep.name, _owner_of(ep), ep.value)
        (builtins if is_builtin else others).append(candidate)
        if not (autoload or is_builtin):
            loader.record(candidate, "disabled", disabled)
        else:
            loader.load(candidate, ep)
    if not any(c.plugin is not None for c in builtins):  # a source tree never installed
        start = time.perf_counter()
        module = importlib.import_module(BUILTINS)
        builtins.append(_Candidate("builtins", _SELF, BUILTINS, module,
                                   import_seconds=time.perf_counter() - start))
    for plugin in plugins or []:
        name = getattr(plugin, "__name__", type(plugin).__name__)
        others.append(_Candidate(name, Owner(name), name, plugin, explicit=True))

    candidates = [*builtins, *others]
    for candidate in candidates:
        if candidate.status is not None:
            continue  # disabled, or failed to import
        if pm.is_registered(candidate.plugin):
            continue  # the same module again (a second entry point, or also passed explicitly)
        if loader.register(candidate):
            loader.run_register_hook(candidate)
    registry.plugin_statuses = [c.status for c in candidates if c.status is not None]
    return registry


@functools.cache
def default_registry() -> Registry:
    """The registry of the installed built-ins and plugins, built once per process."""
    return load_registry()
