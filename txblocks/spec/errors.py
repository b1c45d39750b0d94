"""Turning pydantic's validation errors into SpecError problems with spec paths."""

from __future__ import annotations

import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from txblocks.errors import Problem, did_you_mean

__all__ = ["format_path", "problems_from"]


def format_path(parts: list[str | int]) -> str:
    """``['layers', 0, 'select']`` -> ``layers[0].select``."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _unwrap(annotation: Any) -> Any:
    """Strip Annotated and Optional around a single type."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


def _members(annotation: Any) -> list[Any]:
    annotation = _unwrap(annotation)
    if get_origin(annotation) in (Union, types.UnionType):
        return [_unwrap(a) for a in get_args(annotation) if a is not type(None)]
    return [annotation]


def _tag_of(model: type[BaseModel]) -> str | None:
    for key in ("type", "arch"):
        info = model.model_fields.get(key)
        if info is not None and get_origin(info.annotation) is Literal:
            return get_args(info.annotation)[0]
    return None


def _walk(root: Any, loc: tuple[Any, ...]) -> tuple[list[str | int], Any]:
    """Follow pydantic's ``loc`` through the models; drop union tags and branch labels."""
    path: list[str | int] = []
    node = root
    for item in loc:
        members = _members(node)
        models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
        tagged = {_tag_of(m): m for m in models}
        # a discriminated union's tag (a union of one member is that member, tag and all)
        if item in tagged and (len(members) > 1 or item not in models[0].model_fields):
            node = tagged[item]
            continue
        if len(members) > 1 and isinstance(item, str) and item not in _fields(models):
            continue  # a smart union's branch label such as 'int' or 'literal[...]'
        base = _unwrap(node)
        if isinstance(item, int) and get_origin(base) is list:
            node = get_args(base)[0]
        elif len(models) == 1 and isinstance(item, str) and item in models[0].model_fields:
            node = models[0].model_fields[item].annotation
        elif isinstance(item, str) and item in _fields(models):
            node = next(m for m in models if item in m.model_fields).model_fields[item].annotation
        else:
            node = None
        path.append(item)
    return path, node


def _fields(models: list[type[BaseModel]]) -> set[str]:
    return {name for m in models for name in m.model_fields}


def _allowed_fields(root: Any, loc: tuple[Any, ...]) -> list[str]:
    _, node = _walk(root, loc[:-1])
    models = [m for m in _members(node) if isinstance(m, type) and issubclass(m, BaseModel)]
    return sorted(_fields(models))


def _message(root: Any, error: dict[str, Any]) -> tuple[list[str | int], str]:
    kind, loc, found = error["type"], tuple(error["loc"]), error.get("input")
    ctx = error.get("ctx") or {}
    path, node = _walk(root, loc)
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        key = str(ctx.get("discriminator", "'type'")).strip("'")
        tags = [t.strip().strip("'") for t in str(ctx.get("expected_tags", "")).split(",")]
        if not any(tags):  # pydantic names the tags only for an invalid one
            tags = sorted(str(t) for m in _members(node) if isinstance(m, type)
                          and issubclass(m, BaseModel) and (t := _tag_of(m)) is not None)
        path.append(key)
        if kind == "union_tag_not_found":
            return path, f"missing; allowed: {', '.join(tags)}"
        tag = ctx.get("tag")
        return path, f"unknown {key} {tag!r}; allowed: {', '.join(tags)}{did_you_mean(tag, tags)}"
    if kind == "extra_forbidden":
        allowed = _allowed_fields(root, loc)
        name = path[-1] if path else loc[-1]
        return path, (
            f"unknown field {name!r}; allowed fields: {', '.join(allowed)}"
            f"{did_you_mean(name, allowed)}"
        )
    if kind == "missing":
        return path, "required field is missing"
    if kind == "literal_error":
        expected = str(ctx.get("expected", ""))
        options = [o.strip().strip("'") for o in expected.replace(" or ", ",").split(",")]
        return path, f"got {found!r}; allowed: {expected}{did_you_mean(found, options)}"
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if kind == "value_error":
        return path, message
    return path, f"{message[0].lower()}{message[1:]}; got {found!r}"


def problems_from(root: Any, exc: ValidationError) -> list[Problem]:
    """One problem per distinct path; union branches at one path are merged."""
    merged: dict[str, list[str]] = {}
    for error in exc.errors(include_url=False):
        path, message = _message(root, error)
        messages = merged.setdefault(format_path(path), [])
        if message not in messages:
            messages.append(message)
    return [Problem(path, " | ".join(messages)) for path, messages in merged.items()]
