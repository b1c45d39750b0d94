"""Spec models specialized to a registry, and the JSON Schema they export."""

from __future__ import annotations

import json
import weakref
from typing import Annotated, Any, Union

from pydantic import Field, TypeAdapter

from txblocks.registry import Registry
from txblocks.spec.components import unions_for
from txblocks.spec.models import DecoderSpec, EncoderSpec, ModelSpec, Seq2SeqSpec, VitSpec
from txblocks.spec.slots import specialize

__all__ = ["ARCHS", "SpecModels", "json_schema", "spec_models"]

#: Architectures by their ``arch`` tag; seq2seq and vit join this table.
ARCHS: dict[str, type[ModelSpec]] = {
    "decoder": DecoderSpec,
    "encoder": EncoderSpec,
    "seq2seq": Seq2SeqSpec,
    "vit": VitSpec,
}

SCHEMA_ID = "https://txblocks.dev/schemas/model.schema.json"


class SpecModels:
    """Every spec model of one registry: ``archs[tag]`` and the top-level ``adapter``."""

    def __init__(self, registry: Registry) -> None:
        unions = unions_for(registry)
        self.version = registry.version
        cache: dict[type, type] = {}
        self.archs: dict[str, type[ModelSpec]] = {
            tag: specialize(model, unions.unions, cache) for tag, model in ARCHS.items()
        }
        top = Annotated[Union[tuple(self.archs.values())], Field(discriminator="arch")]  # noqa: UP007
        self.annotation = top
        self.adapter: TypeAdapter[ModelSpec] = TypeAdapter(top)


_CACHE: weakref.WeakKeyDictionary[Registry, SpecModels] = weakref.WeakKeyDictionary()


def spec_models(registry: Registry) -> SpecModels:
    """The spec models of ``registry`` (cached until the registry changes)."""
    cached = _CACHE.get(registry)
    if cached is None or cached.version != registry.version:
        cached = _CACHE[registry] = SpecModels(registry)
    return cached


def json_schema(registry: Registry) -> dict[str, Any]:
    """The JSON Schema of a model spec for every component in ``registry``."""
    schema = spec_models(registry).adapter.json_schema()
    defs = schema.pop("$defs", {})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "txblocks model spec",
        # A spec with `extends:` may leave out anything its base gives (even `arch`); it is
        # checked whole once the base is merged in (`txblocks validate`).
        "anyOf": [schema, EXTENDING],
        "$defs": defs,
    }


EXTENDING: dict[str, Any] = {
    "type": "object",
    "title": "A spec that extends another",
    "required": ["extends"],
    "properties": {"extends": {
        "type": "string",
        "description": "A shipped preset name, or a spec file relative to this one, to start from.",
    }},
}


def schema_text(registry: Registry) -> str:
    """The JSON Schema as stable, indented text (what ``schemas/`` holds)."""
    return json.dumps(json_schema(registry), indent=2, sort_keys=True) + "\n"
