"""The component registry: kind -> name -> entry (factory, config model, owner)."""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from txblocks.errors import BuildError, RegistryError, SpecError, did_you_mean

if TYPE_CHECKING:
    from txblocks.nn.dims import ModelDims

__all__ = ["ComponentConfig", "Entry", "Owner", "Registry", "record_spec_path", "slot", "spec_path"]

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
SLOT_KEY = "txblocks_kind"


class ComponentConfig(BaseModel):
    """Base class of every component's parameters.

    Subclasses declare the parameters as pydantic fields. Unknown fields are
    rejected, and so are non-finite floats (``.inf``, ``.nan``); a field that
    means "unbounded" can opt in with ``Field(allow_inf_nan=True)``. The spec adds
    the ``type`` tag itself: do not declare it, nor fields named like this class's
    methods (``build``, ``check``).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
    # Where the config sits in its spec (``block.ffn``), for build errors; not a field,
    # not compared, not serialized, lost on copies (then errors name the component only).
    __slots__ = ("_txblocks_path",)

    #: Set on the classes that the spec builds from a registry entry.
    txblocks_entry: ClassVar[Entry | None] = None

    def check(self, dims: ModelDims) -> list[str]:
        """Problems of this config in a model of ``dims`` (e.g. an odd rotary width).

        Override to add checks that need the model's sizes; each message becomes a
        :class:`txblocks.SpecError` problem at this component's path.
        """
        return []

    def build(self, *args: Any, **kwargs: Any) -> Any:
        """Call the registered factory with ``args``, then this config.

        Only configs that came out of a validated spec (or
        :meth:`Registry.config`) know their factory.

        Raises:
            BuildError: the factory raised, or returned something that is not what its
                kind promises (None, or e.g. a tensor for a ``norm``); the message gives
                the spec path (when known), the component and the plugin that owns it.
            RegistryError: the config is not bound to a registry entry.
        """
        entry = type(self).txblocks_entry
        if entry is None:
            raise RegistryError(
                f"{type(self).__name__} is not bound to a registry entry; "
                "validate it through a spec or use Registry.config(kind, name, ...)"
            )
        try:
            built = entry.factory(*args, self, **kwargs)
        except _PASS_THROUGH:
            raise  # already names what and where (a nested component, a BuildError)
        except Exception as exc:
            raise BuildError(
                f"{self._where(entry)} failed to build: {type(exc).__name__}: {exc}"
            ) from exc
        problem = _wrong_product(entry.kind, built)
        if problem is not None:
            raise BuildError(f"{self._where(entry)} is broken: its factory {problem}")
        return built

    def _where(self, entry: Entry) -> str:
        """``block.ffn: ffn 'moe' (from txblocks 0.1)``: the spec path when known."""
        path = spec_path(self)
        return f"{path + ': ' if path else ''}{entry.kind} {entry.name!r} (from {entry.owner})"


def spec_path(config: ComponentConfig) -> str | None:
    """Where ``config`` was found in its validated spec (``layers[1].ffn``), if known."""
    try:
        return object.__getattribute__(config, "_txblocks_path")  # type: ignore[no-any-return]
    except AttributeError:
        return None


def record_spec_path(config: ComponentConfig, path: str) -> None:
    """Remember ``path`` as where ``config`` sits in its spec (see :func:`spec_path`)."""
    object.__setattr__(config, "_txblocks_path", path)


@functools.cache
def _product_types() -> dict[str, tuple[type, str]]:
    """What the factory of each kind of the contract (see :mod:`txblocks.hookspecs`) returns."""
    from torch import nn

    from txblocks.attention.kernel import AttentionKernel
    from txblocks.attention.strategies import MaskStrategy
    from txblocks.nn.positional import PositionalScheme

    module = (nn.Module, "a torch.nn.Module")
    return {
        "norm": module,
        "activation": module,
        "ffn": module,
        "head": module,
        "front_end": module,
        "attention": (AttentionKernel, "a txblocks.attention.AttentionKernel"),
        "mask": (MaskStrategy, "a txblocks.attention.MaskStrategy"),
        "position": (PositionalScheme, "a txblocks.nn.PositionalScheme"),
    }


def _wrong_product(kind: str, built: Any) -> str | None:
    """Why ``built`` is not what a factory of ``kind`` must return, or None when it is."""
    expected = _product_types().get(kind)
    if expected is None:
        return None  # kinds outside the table (adapter, quantization, new kinds) return anything
    cls, label = expected
    if built is None:
        return f"returned None; {kind} factories must return {label}"
    if not isinstance(built, cls):
        return f"returned {type(built).__name__}; {kind} factories must return {label}"
    return None


def slot(kind: str, default: Any = ..., **field_kwargs: Any) -> Any:
    """Declare a config field that holds a nested component of ``kind``.

    In a spec the field takes ``{type: NAME, ...}`` or just ``NAME``; it is
    validated against every component of that kind in the registry.

    Example::

        class MLPConfig(ComponentConfig):
            activation: ComponentConfig = slot("activation", "gelu")
    """
    if isinstance(default, str):
        default = {"type": default}
    extra = dict(field_kwargs.pop("json_schema_extra", None) or {})
    extra[SLOT_KEY] = kind
    return Field(default, json_schema_extra=extra, **field_kwargs)


def slot_kind(field: Any) -> str | None:
    """The component kind of a field declared with :func:`slot`, else None."""
    extra = field.json_schema_extra
    return extra.get(SLOT_KEY) if isinstance(extra, dict) else None


#: Errors that a factory raises on purpose and that already say what and where.
_PASS_THROUGH: tuple[type[BaseException], ...] = (BuildError, RegistryError, SpecError)

#: Names that a config field may not take: they would hide ComponentConfig's own API.
_RESERVED = frozenset(n for n in set(dir(ComponentConfig)) - set(dir(BaseModel)) if n[0] != "_")


@dataclass(frozen=True)
class Owner:
    """The distribution that registered a component."""

    name: str
    version: str = ""

    def __str__(self) -> str:
        return f"{self.name} {self.version}".strip()


@dataclass(frozen=True)
class Entry:
    """One registered component."""

    kind: str
    name: str
    factory: Callable[..., Any]
    config: type[ComponentConfig]
    owner: Owner
    description: str


def _describe(factory: Callable[..., Any], config: type[ComponentConfig]) -> str:
    for obj in (config, factory):
        doc = (obj.__doc__ or "").strip()
        if doc and obj.__doc__ is not ComponentConfig.__doc__:
            return doc.splitlines()[0].strip()
    return ""


class Registry:
    """Components by kind and name.

    Build one with :func:`txblocks.default_registry` (installed plugins) or
    :func:`txblocks.plugins.load_registry`; tests make their own, and nothing is
    shared between registries.
    """

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Entry]] = {}
        self._owner = Owner("<python>")
        self.version = 0  # bumped on every change; caches of spec models key on it
        #: The pluggy manager of the plugins that filled this registry (for build-time hooks).
        self.plugin_manager: Any = None
        #: One :class:`txblocks.plugins.PluginStatus` per plugin seen while loading
        #: (read it with :func:`txblocks.plugins.plugin_status`).
        self.plugin_statuses: list[Any] = []

    @contextmanager
    def owned_by(self, owner: Owner) -> Iterator[None]:
        """Record ``owner`` on everything added inside the block."""
        previous, self._owner = self._owner, owner
        try:
            yield
        finally:
            self._owner = previous

    def add(
        self,
        kind: str,
        name: str,
        factory: Callable[..., Any],
        config: type[ComponentConfig] = ComponentConfig,
        *,
        description: str | None = None,
        override: bool = False,
    ) -> Entry:
        """Register ``factory`` as component ``name`` of ``kind``.

        Args:
            kind: ``attention``, ``mask``, ``position``, ``norm``, ``activation``,
                ``ffn``, ``head`` or a new kind (lowercase, ``_``).
            name: the ``type`` that specs use; lowercase with ``_``.
            factory: a class or function; see :mod:`txblocks.hookspecs` for the
                arguments of each kind.
            config: a :class:`ComponentConfig` subclass holding the parameters.
            description: one line for ``txblocks list``; defaults to the first line
                of the config's (or else the factory's) docstring.
            override: replace an existing entry instead of raising.

        Raises:
            RegistryError: a bad name, a config that is not a ComponentConfig, or a
                duplicate (naming both owners) without ``override``.
        """
        for label, value in (("kind", kind), ("name", name)):
            if not isinstance(value, str) or not _NAME.match(value):
                raise RegistryError(
                    f"{self._owner}: invalid component {label} {value!r}: "
                    "use lowercase letters, digits and '_', starting with a letter"
                )
        if not (isinstance(config, type) and issubclass(config, ComponentConfig)):
            raise RegistryError(
                f"{self._owner}: config of {kind} {name!r} must subclass "
                f"txblocks.ComponentConfig, got {config!r}"
            )
        if "type" in config.model_fields:
            raise RegistryError(
                f"{self._owner}: config of {kind} {name!r} declares a 'type' field; "
                "the spec adds that tag itself"
            )
        shadowing = sorted(set(config.model_fields) & _RESERVED)
        if shadowing:
            raise RegistryError(
                f"{self._owner}: config {config.__name__} of {kind} {name!r} declares "
                f"{', '.join(repr(f) for f in shadowing)}, which ComponentConfig uses for its "
                "own methods; rename the field"
            )
        if not callable(factory):
            raise RegistryError(f"{self._owner}: factory of {kind} {name!r} is not callable")
        existing = self._entries.get(kind, {}).get(name)
        if existing is not None and not override:
            raise RegistryError(
                f"{kind} {name!r} is registered twice: by {existing.owner} and by "
                f"{self._owner}; uninstall one, or register with override=True"
            )
        entry = Entry(
            kind=kind,
            name=name,
            factory=factory,
            config=config,
            owner=self._owner,
            description=description if description is not None else _describe(factory, config),
        )
        self._entries.setdefault(kind, {})[name] = entry
        self.version += 1
        return entry

    def snapshot(self) -> dict[str, dict[str, Entry]]:
        """A copy of every entry, to :meth:`restore` if a plugin fails midway."""
        return {kind: dict(entries) for kind, entries in self._entries.items()}

    def restore(self, snapshot: dict[str, dict[str, Entry]]) -> None:
        """Return to a :meth:`snapshot`, undoing additions and overrides since."""
        self._entries = {kind: dict(entries) for kind, entries in snapshot.items()}
        self.version += 1

    def get(self, kind: str, name: str) -> Entry:
        """The entry for ``kind``/``name``; the error lists what exists."""
        if kind not in self._entries:
            raise RegistryError(
                f"unknown component kind {kind!r}; known kinds: "
                f"{', '.join(self.kinds()) or '(none)'}{did_you_mean(kind, self.kinds())}"
            )
        try:
            return self._entries[kind][name]
        except KeyError:
            names = self.names(kind)
            raise RegistryError(
                f"unknown {kind} {name!r}; registered: {', '.join(names)}"
                f"{did_you_mean(name, names)}"
            ) from None

    def __contains__(self, key: tuple[str, str]) -> bool:
        kind, name = key
        return name in self._entries.get(kind, {})

    def kinds(self) -> list[str]:
        """Every kind with at least one entry, sorted."""
        return sorted(k for k, v in self._entries.items() if v)

    def names(self, kind: str, pattern: str = "*") -> list[str]:
        """Sorted names of ``kind`` matching a shell-style ``pattern`` (``rope*``)."""
        return sorted(fnmatch.filter(self._entries.get(kind, {}), pattern))

    def entries(self, kind: str | None = None, pattern: str = "*") -> list[Entry]:
        """Entries of one kind (or all kinds) whose name matches ``pattern``."""
        kinds = [kind] if kind is not None else self.kinds()
        return [self._entries[k][n] for k in kinds for n in self.names(k, pattern)]

    def config(self, kind: str, name: str, **params: Any) -> ComponentConfig:
        """A validated config for ``kind``/``name``, ready to ``.build(...)``.

        This goes through the same pydantic models as a spec, so nested slots
        (``activation="silu"``) are accepted too.
        """
        from pydantic import ValidationError

        from txblocks.spec.components import component_adapter, unions_for
        from txblocks.spec.errors import problems_from

        adapter = component_adapter(self, kind)
        try:
            return adapter.validate_python({"type": name, **params})
        except ValidationError as exc:
            root = unions_for(self).union(kind)
            raise SpecError(problems_from(root, exc), source=f"{kind} {name!r}") from None

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}={len(self._entries[k])}" for k in self.kinds())
        return f"Registry({counts})"
