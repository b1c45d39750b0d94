"""The exported JSON Schema: current, valid, and in agreement with the spec models."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from txblocks import load_spec
from txblocks.plugins import load_registry
from txblocks.spec import json_schema, schema_text

ROOT = Path(__file__).parents[1]
SCHEMA_FILE = ROOT / "schemas" / "model.schema.json"
SPECS = sorted((ROOT / "examples" / "specs").glob("*.yaml"))
REGENERATE = (
    "make schema  (that is: TXBLOCKS_DISABLE_PLUGIN_AUTOLOAD=1 .venv/bin/txblocks schema "
    "-o schemas/model.schema.json)"
)

TINY: dict[str, Any] = {
    "arch": "decoder", "vocab_size": 64, "d_model": 32, "n_layers": 2, "n_heads": 4,
    "block": {"norm": {"type": "rmsnorm", "eps": 1e-6}, "ffn": {"type": "mlp", "hidden": 64}},
}


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json_schema(load_registry(autoload=False))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_schema_file_is_current():
    expected = schema_text(load_registry(autoload=False))
    found = SCHEMA_FILE.read_text(encoding="utf-8") if SCHEMA_FILE.exists() else "<missing>"
    assert found == expected, (
        f"{SCHEMA_FILE.relative_to(ROOT)} is stale (the registry's components or the spec models "
        f"changed); regenerate it with: {REGENERATE}"
    )


def test_schema_file_is_valid_draft_2020_12():
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert {"DecoderSpec", "EncoderSpec"} <= set(schema["$defs"])


def test_every_registered_component_is_in_the_schema(registry):
    schema = json_schema(registry)
    consts = {d["properties"]["type"].get("const") for d in schema["$defs"].values()
              if "type" in d.get("properties", {})}
    for entry in registry.entries():
        assert entry.name in consts, f"{entry.kind} {entry.name!r} missing from the schema"


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_example_validates_against_the_schema(validator, registry, path):
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    validator.validate(raw)  # as written, `extends:` included
    # resolved: what the spec means after `extends:` and defaults
    spec = load_spec(path, registry=registry)
    validator.validate(spec.model_dump(mode="json", exclude_none=True))
    validator.validate(json.loads(json.dumps(yaml.safe_load(spec.to_yaml()))))


def test_tiny_spec_and_shorthands_validate(validator):
    validator.validate(TINY)
    shorthand = {**TINY, "position": "rope", "block": {"norm": "rmsnorm", "ffn": "glu",
                                                       "attention": {"mask": "causal"}}}
    validator.validate(shorthand)
    validator.validate({**TINY, "layers": [{"select": "odd", "ffn": "glu"},
                                           {"select": [0, -1], "norm": "layernorm"},
                                           {"select": {"start": 0, "step": 2}, "dropout": 0.1}]})


def _broken(change) -> dict[str, Any]:
    spec = copy.deepcopy(TINY)
    change(spec)
    return spec


BROKEN = {
    "unknown-top-level-field": lambda s: s.update(n_head=4),
    "unknown-block-field": lambda s: s["block"].update(layuot="pre_norm"),
    "unknown-component-field": lambda s: s["block"]["ffn"].update(hiden=64),
    "unknown-component-field-norm": lambda s: s["block"].update(
        norm={"type": "rmsnorm", "bias": False}),
    "unknown-component-type": lambda s: s["block"].update(ffn={"type": "mpl"}),
    "unknown-shorthand": lambda s: s["block"].update(norm="rmsnrom"),
    "unknown-arch": lambda s: s.update(arch="decodr"),
    "wrong-type": lambda s: s.update(d_model="big"),
    "negative-size": lambda s: s.update(vocab_size=-1),
    "dropout-one": lambda s: s["block"].update(dropout=1.0),
    "bad-layout": lambda s: s["block"].update(layout="prenorm"),
    "missing-window": lambda s: s["block"].update(attention={"mask": {"type": "sliding_window"}}),
    "bad-select-word": lambda s: s.update(layers=[{"select": "od"}]),
}


@pytest.mark.parametrize("change", BROKEN.values(), ids=BROKEN.keys())
def test_broken_specs_fail_schema_validation(validator, registry, change):
    spec = _broken(change)
    assert not validator.is_valid(spec)
    with pytest.raises(ValueError):  # the spec models agree (SpecError is a ValueError)
        load_spec(spec, registry=registry)


def test_unknown_field_error_names_the_field(validator):
    errors = list(validator.iter_errors(_broken(lambda s: s.update(n_head=4))))
    assert errors and any("n_head" in e.message for e in errors)


def test_a_spec_without_extends_must_be_whole(validator):
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({"name": "partial", "d_model": 64})
    validator.validate({"extends": "llama", "name": "partial", "d_model": 64})
