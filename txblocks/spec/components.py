"""Discriminated unions of component configs, built from a registry.

Each registered component becomes a pydantic model: its config class plus a
``type`` tag. A slot of kind K accepts ``{type: NAME, ...}`` (or just ``NAME``)
for any NAME registered under K, so a plugin's parameters are validated, and
appear in the JSON Schema, exactly like the built-ins'.
"""

from __future__ import annotations

import weakref
from typing import Annotated, Any, Literal, Union

from pydantic import BeforeValidator, Field, TypeAdapter, create_model

from txblocks.spec.slots import specialized_fields

from txblocks.registry import ComponentConfig, Entry, Registry

__all__ = ["ComponentUnions", "component_adapter", "unions_for"]


def _camel(text: str) -> str:
    return "".join(part.capitalize() for part in text.split("_"))


def _shorthand(value: Any) -> Any:
    return {"type": value} if isinstance(value, str) else value


def _alias(kind: str) -> str:
    return f"_Union_{kind}"


class ComponentUnions:
    """The tagged union of every kind in one registry, built once per registry version."""

    def __init__(self, registry: Registry) -> None:
        self.version = registry.version
        self.models: dict[tuple[str, str], type[ComponentConfig]] = {}
        namespace: dict[str, Any] = {}
        kinds = set(registry.kinds())
        for entry in registry.entries():
            self.models[entry.kind, entry.name] = self._tagged_model(entry, kinds)
        self.unions: dict[str, Any] = {}
        for kind in registry.kinds():
            members = [self.models[kind, name] for name in registry.names(kind)]
            names = tuple(registry.names(kind))
            tagged = Annotated[Union[tuple(members)], Field(discriminator="type")]  # noqa: UP007
            shorthand = Union[Literal[names], tagged]  # noqa: UP007
            union = Annotated[
                tagged, BeforeValidator(_shorthand, json_schema_input_type=shorthand)
            ]
            self.unions[kind] = union
            namespace[_alias(kind)] = union
        for model in self.models.values():
            model.model_rebuild(_types_namespace=namespace, force=True)
        self._adapters: dict[str, TypeAdapter[Any]] = {}

    @staticmethod
    def _tagged_model(entry: Entry, kinds: set[str]) -> type[ComponentConfig]:
        # Slots refer to the unions by name: they are resolved once all exist.
        aliases = {kind: _alias(kind) for kind in kinds}
        fields = specialized_fields(entry.config, aliases, {})
        model = create_model(  # type: ignore[call-overload]
            f"{_camel(entry.kind)}{_camel(entry.name)}",
            __base__=entry.config,
            __module__=entry.config.__module__,
            __doc__=entry.description or entry.config.__doc__,
            type=(Literal[entry.name], ...),
            **fields,
        )
        model.txblocks_entry = entry
        return model

    def union(self, kind: str) -> Any:
        """The annotation for a slot of ``kind`` (accepts ``NAME`` or ``{type: NAME, ...}``)."""
        return self.unions[kind]

    def adapter(self, kind: str) -> TypeAdapter[Any]:
        if kind not in self._adapters:
            self._adapters[kind] = TypeAdapter(self.unions[kind])
        return self._adapters[kind]


_CACHE: weakref.WeakKeyDictionary[Registry, ComponentUnions] = weakref.WeakKeyDictionary()


def unions_for(registry: Registry) -> ComponentUnions:
    """The component unions of ``registry``, rebuilt when the registry changes."""
    cached = _CACHE.get(registry)
    if cached is None or cached.version != registry.version:
        cached = _CACHE[registry] = ComponentUnions(registry)
    return cached


def component_adapter(registry: Registry, kind: str) -> TypeAdapter[Any]:
    """A pydantic adapter validating one component config of ``kind``."""
    from txblocks.errors import RegistryError

    unions = unions_for(registry)
    if kind not in unions.unions:
        registry.get(kind, "")  # raises with the list of known kinds
        raise RegistryError(f"no component of kind {kind!r} is registered")
    return unions.adapter(kind)
