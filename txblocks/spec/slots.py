"""Rewriting spec annotations: component slots become the registry's unions."""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, Field, PlainValidator, create_model, model_validator
from pydantic.fields import FieldInfo

from txblocks.registry import ComponentConfig, record_spec_path, slot_kind
from txblocks.spec.errors import format_path

__all__ = ["Slot", "SlotMarker", "specialize", "specialized_fields"]


@dataclass(frozen=True)
class SlotMarker:
    """Annotation metadata: this field holds a component of ``kind``."""

    kind: str


class Slot:
    """``Slot["norm"]`` annotates a spec field that holds a registered ``norm``."""

    def __class_getitem__(cls, kind: str) -> Any:
        return Annotated[Any, SlotMarker(kind)]


def _missing(kind: str) -> Any:
    """A slot of a kind that no installed plugin provides: any value is an error."""

    def reject(value: Any) -> Any:
        raise ValueError(
            f"no {kind} component is installed; install a plugin that provides one "
            f"(`txblocks list` shows what is registered)"
        )

    return Annotated[Any, PlainValidator(reject, json_schema_input_type=dict[str, Any])]


def slot_type(kind: str, unions: dict[str, Any]) -> Any:
    """The annotation of a slot of ``kind``: the registry's union, or a clear refusal."""
    return unions[kind] if kind in unions else _missing(kind)


def _rewrite(annotation: Any, unions: dict[str, Any], cache: dict[type, type]) -> Any:
    origin = get_origin(annotation)
    if origin is Annotated:
        base, *meta = get_args(annotation)
        for item in meta:
            if isinstance(item, SlotMarker):
                return slot_type(item.kind, unions)
        return Annotated[(_rewrite(base, unions, cache), *meta)]  # type: ignore[misc]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return specialize(annotation, unions, cache)
    if origin in (Union, types.UnionType):
        return Union[tuple(_rewrite(a, unions, cache) for a in get_args(annotation))]  # noqa: UP007
    if origin in (list, tuple, dict):
        return origin[tuple(_rewrite(a, unions, cache) for a in get_args(annotation))]
    if origin is Literal:
        return annotation
    return annotation


def _needs_rewrite(annotation: Any) -> bool:
    if get_origin(annotation) is Annotated and any(
        isinstance(m, SlotMarker) for m in get_args(annotation)[1:]
    ):
        return True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True
    return any(_needs_rewrite(a) for a in get_args(annotation))


def specialize(model: type[BaseModel], unions: dict[str, Any], cache: dict[type, type]) -> type:
    """A subclass of ``model`` whose slots accept the components in ``unions``.

    Nested spec models are specialized too; ``cache`` keeps one class per model.
    """
    if model in cache:
        return cache[model]
    fields = specialized_fields(model, unions, cache)
    if not fields:
        cache[model] = model
        return model
    # A whole spec (it has an `arch`) records where each component sits, for build errors.
    validators = {"_txblocks_paths": _record_paths} if "arch" in model.model_fields else None
    special = create_model(  # type: ignore[call-overload]
        model.__name__, __base__=model, __module__=model.__module__, __doc__=model.__doc__,
        __validators__=validators, **fields
    )
    cache[model] = special
    return special


def _walk(node: Any, path: list[str | int]) -> None:
    if isinstance(node, ComponentConfig):
        record_spec_path(node, format_path(path))
    if isinstance(node, BaseModel):
        for name in type(node).model_fields:
            _walk(getattr(node, name), [*path, name])
    elif isinstance(node, (list, tuple)):
        for i, item in enumerate(node):
            _walk(item, [*path, i])


@model_validator(mode="after")
def _record_paths(spec: Any) -> Any:
    """Record on each component config its path in the validated spec (``layers[0].ffn``)."""
    _walk(spec, [])
    return spec


def specialized_fields(
    model: type[BaseModel], unions: dict[str, Any], cache: dict[type, type]
) -> dict[str, Any]:
    """``create_model`` field definitions for the fields of ``model`` that need rewriting."""
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        kind = slot_kind(info) or next(
            (m.kind for m in info.metadata if isinstance(m, SlotMarker)), None
        )
        if kind is not None:
            annotation = slot_type(kind, unions)
        elif _needs_rewrite(info.annotation):
            annotation = _rewrite(info.annotation, unions, cache)
        else:
            continue
        fields[name] = (annotation, _copy_field(info, annotation))
    return fields


def _copy_field(info: FieldInfo, annotation: Any) -> Any:
    kwargs: dict[str, Any] = {
        "description": info.description,
        "json_schema_extra": info.json_schema_extra,
        "validate_default": True,
    }
    factory = info.default_factory
    if isinstance(factory, type) and issubclass(factory, BaseModel) and isinstance(annotation, type):
        factory = annotation  # the specialized model builds the default
    if factory is not None:
        return Field(default_factory=factory, **kwargs)
    return Field(info.default, **kwargs)
