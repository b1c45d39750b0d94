"""The model spec: pydantic models, their registry unions, YAML/JSON io and the schema."""

from txblocks.spec.io import dump_yaml, load_spec, preset_names, validate_spec
from txblocks.spec.models import (
    AttentionSpec,
    BlockSpec,
    DecoderSpec,
    EmbeddingSpec,
    EncoderSpec,
    LayerOverride,
    ModelSpec,
    Seq2SeqSpec,
    TextSpec,
    VitSpec,
)
from txblocks.spec.schema import json_schema, schema_text, spec_models
from txblocks.spec.slots import Slot

__all__ = [
    "AttentionSpec",
    "BlockSpec",
    "DecoderSpec",
    "EmbeddingSpec",
    "EncoderSpec",
    "LayerOverride",
    "ModelSpec",
    "Seq2SeqSpec",
    "Slot",
    "TextSpec",
    "VitSpec",
    "dump_yaml",
    "json_schema",
    "load_spec",
    "preset_names",
    "schema_text",
    "spec_models",
    "validate_spec",
]
