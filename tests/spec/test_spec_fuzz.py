"""Fuzzing load_spec: whatever it is given, it returns a spec or raises SpecError, nothing else."""

from __future__ import annotations

import copy
import json
from typing import Any

import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from txblocks import ModelSpec, SpecError, load_spec
from txblocks.plugins import load_registry

# One registry for the whole module: hypothesis runs many examples per test, and a
# function-scoped fixture would be shared across them anyway.
REGISTRY = load_registry(autoload=False)

VALID: dict[str, Any] = {
    "arch": "decoder",
    "name": "fuzz",
    "vocab_size": 64,
    "max_seq_len": 32,
    "d_model": 32,
    "n_layers": 2,
    "n_heads": 4,
    "n_kv_heads": 2,
    "position": {"type": "rope", "theta": 10000.0, "fraction": 0.5},
    "embedding": {"dropout": 0.0, "norm": {"type": "layernorm", "eps": 1e-5}},
    "block": {
        "layout": "pre_norm",
        "norm": {"type": "rmsnorm", "eps": 1e-6},
        "attention": {"kernel": "auto", "mask": {"type": "sliding_window", "window": 4},
                      "bias": False, "qk_norm": "rmsnorm"},
        "ffn": {"type": "glu", "hidden": 48, "activation": "silu"},
        "dropout": 0.0,
    },
    "layers": [
        {"select": "odd", "ffn": {"type": "mlp", "hidden": 64, "activation": "gelu"}},
        {"select": [0], "attention": {"mask": "causal"}},
        {"select": {"start": 0, "step": 2}, "norm": "layernorm"},
    ],
    "head": {"type": "lm", "tie_embeddings": True},
}

# Words that the spec knows, so that random mappings sometimes reach deep into the models.
WORDS = sorted({
    "arch", "decoder", "encoder", "name", "extends", "vocab_size", "max_seq_len", "d_model",
    "n_layers", "n_heads", "n_kv_heads", "head_dim", "position", "embedding", "block", "layers",
    "final_norm", "head", "init_std", "type", "select", "layout", "norm", "attention", "ffn",
    "dropout", "kernel", "mask", "window", "hidden", "activation", "eps", "rope", "theta",
    "fraction", "scaling", "factor", "odd", "even", "all", "start", "stop", "step", "mlp", "glu",
    "rmsnorm", "layernorm", "causal", "sliding_window", "lm", "classifier", "n_classes", "llama",
    "gpt2", "pre_norm", "post_norm", "parallel", "silu", "gelu", "sdpa", "eager", "auto",
})

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(WORDS),
)
keys = st.one_of(st.sampled_from(WORDS), st.text(max_size=8))
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(keys, inner, max_size=5),
    ),
    max_leaves=20,
)

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check(source: Any) -> None:
    try:
        spec = load_spec(source, registry=REGISTRY)
    except SpecError as exc:
        assert exc.problems, "a SpecError must list at least one problem"
        for problem in exc.problems:
            assert isinstance(problem.path, str) and isinstance(problem.message, str)
            assert problem.message
            assert f"{problem.path or '<spec>'}: {problem.message}" in str(exc)
    else:
        assert isinstance(spec, ModelSpec)
        # whatever loads also round-trips
        assert load_spec(spec.to_yaml(), registry=REGISTRY) == spec


def test_the_valid_base_loads():
    spec = load_spec(VALID, registry=REGISTRY)
    assert spec.block_for(1).ffn.type == "mlp"


@FUZZ
@given(st.dictionaries(keys, json_values, max_size=8))
def test_random_mappings(data):
    check(data)


@FUZZ
@given(st.dictionaries(keys, json_values, max_size=6))
def test_random_mappings_with_a_valid_arch(data):
    check({**data, "arch": "decoder"})


@FUZZ
@given(json_values)
def test_random_values_as_yaml_and_json_text(value):
    try:
        text = json.dumps(value)
    except ValueError:
        assume(False)
    check(text)
    check(yaml.safe_dump(value))


@FUZZ
@given(st.text(max_size=200))
def test_random_text(text):
    assume(not text.strip().endswith((".yaml", ".yml", ".json")))  # not a path
    check(text)


# --- mutations of a valid spec -------------------------------------------------------------


def _containers(node: Any, out: list[Any]) -> list[Any]:
    if isinstance(node, (dict, list)):
        out.append(node)
        items = node.values() if isinstance(node, dict) else node
        for item in items:
            _containers(item, out)
    return out


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    spec = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 3))):
        containers = _containers(spec, [])
        node = draw(st.sampled_from(containers))
        action = draw(st.sampled_from(["drop", "change", "insert"]))
        if isinstance(node, dict):
            if action == "insert" or not node:
                node[draw(keys)] = draw(json_values)
            elif action == "drop":
                node.pop(draw(st.sampled_from(sorted(node))))
            else:
                node[draw(st.sampled_from(sorted(node)))] = draw(json_values)
        else:
            if action == "insert" or not node:
                node.insert(draw(st.integers(0, len(node))), draw(json_values))
            elif action == "drop":
                node.pop(draw(st.integers(0, len(node) - 1)))
            else:
                node[draw(st.integers(0, len(node) - 1))] = draw(json_values)
    return spec


@FUZZ
@given(mutated())
def test_mutations_of_a_valid_spec(spec):
    check(spec)


@FUZZ
@given(mutated())
def test_mutations_of_a_valid_spec_as_yaml(spec):
    check(yaml.safe_dump(spec, sort_keys=False))


@settings(max_examples=50, deadline=None)
@given(st.sampled_from(sorted(VALID)), st.integers(min_value=-3, max_value=70))
def test_small_integers_in_any_top_level_field(key, value):
    check({**VALID, key: value})
