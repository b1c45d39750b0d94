"""Broken specs: every mistake raises SpecError with its exact path and a useful message.

Each case starts from a valid tiny decoder (vocab 64, d_model 32, 2 layers, 4 heads),
changes one thing, and checks the problem's path and the key part of its message:
what was found, what is allowed, and the did-you-mean suggestion.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from txblocks import Problem, SpecError, load_spec

BASE: dict[str, Any] = {
    "arch": "decoder",
    "name": "tiny",
    "vocab_size": 64,
    "max_seq_len": 64,
    "d_model": 32,
    "n_layers": 2,
    "n_heads": 4,
    "position": "learned",
    "block": {
        "layout": "pre_norm",
        "norm": {"type": "layernorm", "eps": 1e-5},
        "attention": {"kernel": "auto", "mask": "causal"},
        "ffn": {"type": "mlp", "hidden": 64, "activation": "gelu"},
    },
    "head": {"type": "lm"},
}

DELETE = object()


def broken(**changes: Any) -> dict[str, Any]:
    """BASE with ``changes`` applied; keys are dotted paths (``block__ffn__type``)."""
    spec = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = spec
        for key in parents:
            node = node.setdefault(key, {})
        if value is DELETE:
            node.pop(last, None)
        else:
            node[last] = value
    return spec


def problem_line(path: str, message: str) -> str:
    """A regex for one ``  path: message`` line of ``str(SpecError)``."""
    return rf"(?m)^  {re.escape(path)}: .*{message}"


def assert_problem(exc: SpecError, path: str, message: str) -> Problem:
    matches = [p for p in exc.problems if p.path == path]
    assert matches, f"no problem at {path!r}; got {exc.problems}"
    assert any(re.search(message, p.message) for p in matches), (path, message, matches)
    return matches[0]


def test_base_is_valid(registry):
    spec = load_spec(BASE, registry=registry)
    assert (spec.vocab_size, spec.d_model, spec.n_layers, spec.n_heads) == (64, 32, 2, 4)


E = re.escape

# (id, changes, path, message regex)
CASES: list[tuple[str, dict[str, Any], str, str]] = [
    # --- unknown component type, in every slot -------------------------------------------
    ("norm-type", {"block__norm": {"type": "rmsnrom"}}, "block.norm.type",
     E("unknown type 'rmsnrom'; allowed: layernorm, rmsnorm; did you mean 'rmsnorm'?")),
    ("norm-shorthand", {"block__norm": "layernrom"}, "block.norm.type",
     E("unknown type 'layernrom'; allowed: layernorm, rmsnorm; did you mean 'layernorm'?")),
    ("ffn-type", {"block__ffn": {"type": "mpl"}}, "block.ffn.type",
     E("unknown type 'mpl'; allowed: glu, mlp") + ".*" + E("did you mean 'mlp'?")),
    ("activation-in-ffn", {"block__ffn__activation": "gelu_tahn"}, "block.ffn.activation.type",
     E("unknown type 'gelu_tahn'; allowed: gelu, gelu_tanh, quick_gelu, relu, silu")
     + ".*" + E("did you mean 'gelu_tanh'?")),
    ("activation-dict", {"block__ffn__activation": {"type": "slu"}}, "block.ffn.activation.type",
     E("unknown type 'slu'") + ".*" + E("did you mean 'silu'?")),
    ("position-type", {"position": {"type": "rop", "theta": 10000}}, "position.type",
     E("unknown type 'rop'; allowed: alibi, learned, none, relative_bias, relative_bias_2d, rope, sinusoidal")
     + ".*" + E("did you mean 'rope'?")),
    ("attention-kernel", {"block__attention__kernel": "sdpaa"}, "block.attention.kernel.type",
     E("unknown type 'sdpaa'; allowed: auto, eager, sdpa, xformers; did you mean 'sdpa'?")),
    ("mask-type", {"block__attention__mask": "casual"}, "block.attention.mask.type",
     E("unknown type 'casual'; allowed: block_diagonal, causal, none, prefix_lm, sliding_window")
     + ".*" + E("did you mean 'causal'?")),
    ("head-type", {"head": {"type": "lmm"}}, "head.type",
     E("unknown type 'lmm'; allowed: classifier, lm, mlm, token_classifier; did you mean 'lm'?")),
    ("qk-norm-type", {"block__attention__qk_norm": "rmsnorn"}, "block.attention.qk_norm.type",
     E("unknown type 'rmsnorn'; allowed: layernorm, rmsnorm; did you mean 'rmsnorm'?")),
    ("embedding-norm-type", {"embedding": {"norm": {"type": "layer_norm", "eps": 1e-12}}},
     "embedding.norm.type", E("unknown type 'layer_norm'") + ".*" + E("did you mean 'layernorm'?")),
    ("head-nested-norm", {"head": {"type": "mlm", "norm": "batchnorm"}}, "head.norm.type",
     E("unknown type 'batchnorm'; allowed: layernorm, rmsnorm")),
    ("override-ffn-type", {"layers": [{"select": "odd", "ffn": {"type": "mixture", "experts": 8}}]},
     "layers[0].ffn.type", E("unknown type 'mixture'; allowed: glu, mlp")),
    ("override-mask-type", {"layers": [{"select": 1, "attention": {"mask": "sliding"}}]},
     "layers[0].attention.mask.type", E("unknown type 'sliding'") + ".*"
     + E("did you mean 'sliding_window'?")),
    ("component-type-not-a-string", {"block__norm": {"type": 3}}, "block.norm.type",
     E("unknown type '3'; allowed: layernorm, rmsnorm")),
    # --- a typo in a field name: did-you-mean -----------------------------------------------
    ("top-level-typo", {"n_head": 4}, "n_head",
     E("unknown field 'n_head'; allowed fields: adapters, arch, block,") + ".*"
     + E("did you mean 'n_heads'?")),
    ("component-field-typo", {"block__ffn__hiden": 64}, "block.ffn.hiden",
     E("unknown field 'hiden'; allowed fields: activation, bias, dropout, hidden, type; "
       "did you mean 'hidden'?")),
    ("block-field-typo", {"block__layuot": "post_norm"}, "block.layuot",
     E("unknown field 'layuot'; allowed fields: attention, dropout, ffn, layer_scale, layout, norm, "
       "post_attention_norm, post_ffn_norm, shared_norm; did you mean 'layout'?")),
    ("attention-field-typo", {"block__attention__qkv_baas": False}, "block.attention.qkv_baas",
     E("unknown field 'qkv_baas'") + ".*" + E("did you mean 'qkv_bias'?")),
    ("embedding-field-typo", {"embedding": {"dropuot": 0.1}}, "embedding.dropuot",
     E("unknown field 'dropuot'") + ".*" + E("did you mean 'dropout'?")),
    ("override-field-typo", {"layers": [{"select": "odd", "atention": {"bias": False}}]},
     "layers[0].atention",
     E("unknown field 'atention'; allowed fields: attention, dropout, ffn, layer_scale, layout, norm, "
       "post_attention_norm, post_ffn_norm, select, shared_norm, stack; "
       "did you mean 'attention'?")),
    ("position-field-typo", {"position": {"type": "rope", "theeta": 1e4}}, "position.theeta",
     E("unknown field 'theeta'") + ".*" + E("did you mean 'theta'?")),
    # --- an extra field inside a component ----------------------------------------------------
    ("extra-field-norm", {"block__norm": {"type": "rmsnorm", "bias": False}}, "block.norm.bias",
     E("unknown field 'bias'; allowed fields: eps, type")),
    ("extra-field-kernel", {"block__attention__kernel": {"type": "sdpa", "candidates": ["sdpa"]}},
     "block.attention.kernel.candidates", E("unknown field 'candidates'; allowed fields: type")),
    ("extra-field-mask", {"block__attention__mask": {"type": "causal", "window": 4}},
     "block.attention.mask.window", E("unknown field 'window'; allowed fields: type")),
    # --- a value of the wrong type ------------------------------------------------------------
    ("d-model-string", {"d_model": "big"}, "d_model", "valid integer.*" + E("got 'big'")),
    ("d-model-fraction", {"d_model": 32.5}, "d_model", "valid integer.*" + E("got 32.5")),
    ("d-model-bool", {"d_model": True}, "d_model", "valid integer.*" + E("got True")),
    ("n-layers-string", {"n_layers": "4"}, "n_layers", "valid integer.*" + E("got '4'")),
    ("bias-not-bool", {"block__attention__bias": "maybe"}, "block.attention.bias",
     "valid boolean.*" + E("got 'maybe'")),
    ("eps-not-number", {"block__norm__eps": "tiny"}, "block.norm.eps",
     "valid number.*" + E("got 'tiny'")),
    ("layers-not-a-list", {"layers": {"select": "odd"}}, "layers", "valid list"),
    ("override-not-a-mapping", {"layers": [None]}, "layers[0]", "valid dictionary"),
    ("norm-not-a-mapping", {"block__norm": 3}, "block.norm", "valid dictionary.*" + E("got 3")),
    ("name-not-a-string", {"name": ["a", "b"]}, "name", "valid string"),
    ("embedding-scale-word", {"embedding": {"scale": "sqrt"}}, "embedding.scale",
     E("got 'sqrt'") + ".*sqrt_d_model"),
    ("auto-candidate", {"block__attention__kernel": {"type": "auto", "candidates": ["flash"]}},
     "block.attention.kernel.candidates[0]",
     E("got 'flash'; allowed: 'xformers', 'sdpa' or 'eager'")),
    # --- a missing required field ---------------------------------------------------------
    ("missing-vocab-size", {"vocab_size": DELETE}, "vocab_size", "required field is missing"),
    ("missing-n-heads", {"n_heads": DELETE}, "n_heads", "required field is missing"),
    ("missing-window", {"block__attention__mask": "sliding_window"},
     "block.attention.mask.window", "required field is missing"),
    ("missing-window-dict", {"block__attention__mask": {"type": "sliding_window"}},
     "block.attention.mask.window", "required field is missing"),
    ("missing-n-classes", {"head": "classifier"}, "head.n_classes", "required field is missing"),
    ("missing-n-classes-token", {"head": {"type": "token_classifier", "dropout": 0.1}},
     "head.n_classes", "required field is missing"),
    ("missing-select", {"layers": [{"norm": "rmsnorm"}]}, "layers[0].select",
     "required field is missing"),
    ("missing-scaling-factor", {"position": {"type": "rope", "scaling": {"type": "linear"}}},
     "position.scaling.factor", "required field is missing"),
    # --- sizes: negative, zero, inconsistent ------------------------------------------------
    ("d-model-not-divisible", {"n_heads": 5}, "n_heads",
     E("d_model 32 is not divisible by n_heads 5; use one of 1, 2, 4, 8, 16, 32, or set head_dim")),
    ("heads-not-multiple-of-kv", {"n_kv_heads": 3}, "n_kv_heads",
     E("n_heads 4 is not a multiple of n_kv_heads 3; use one of 1, 2, 4")),
    ("kv-heads-above-heads", {"n_kv_heads": 8}, "n_kv_heads",
     E("n_kv_heads 8") + ".*" + E("use one of 1, 2, 4")),
    ("negative-vocab", {"vocab_size": -1}, "vocab_size", "greater than 0.*" + E("got -1")),
    ("zero-layers", {"n_layers": 0}, "n_layers", "greater than 0.*" + E("got 0")),
    ("zero-d-model", {"d_model": 0}, "d_model", "greater than 0.*" + E("got 0")),
    ("negative-kv-heads", {"n_kv_heads": -2}, "n_kv_heads", "greater than 0.*" + E("got -2")),
    ("zero-head-dim", {"head_dim": 0}, "head_dim", "greater than 0.*" + E("got 0")),
    ("zero-max-seq-len", {"max_seq_len": 0}, "max_seq_len", "greater than 0.*" + E("got 0")),
    ("zero-ffn-hidden", {"block__ffn__hidden": 0}, "block.ffn.hidden",
     "greater than 0.*" + E("got 0")),
    ("negative-eps", {"block__norm__eps": -1e-5}, "block.norm.eps", "greater than 0"),
    ("zero-init-std", {"init_std": 0}, "init_std", "greater than 0.*" + E("got 0")),
    ("negative-token-types", {"embedding": {"token_types": -1}}, "embedding.token_types",
     "greater than or equal to 0"),
    ("window-zero", {"block__attention__mask": {"type": "sliding_window", "window": 0}},
     "block.attention.mask.window", "greater than or equal to 1.*" + E("got 0")),
    ("window-negative", {"block__attention__mask": {"type": "sliding_window", "window": -4}},
     "block.attention.mask.window", "greater than or equal to 1.*" + E("got -4")),
    ("n-classes-zero", {"head": {"type": "classifier", "n_classes": 0}}, "head.n_classes",
     "greater than 0"),
    # --- dropout >= 1 -----------------------------------------------------------------------
    ("block-dropout-one", {"block__dropout": 1.0}, "block.dropout", "less than 1.*" + E("got 1.0")),
    ("attention-dropout", {"block__attention__dropout": 1.5}, "block.attention.dropout",
     "less than 1.*" + E("got 1.5")),
    ("embedding-dropout", {"embedding": {"dropout": 1}}, "embedding.dropout", "less than 1"),
    ("ffn-dropout", {"block__ffn__dropout": 2.0}, "block.ffn.dropout",
     "less than 1.*" + E("got 2.0")),
    ("negative-dropout", {"block__dropout": -0.1}, "block.dropout", "greater than or equal to 0"),
    ("override-dropout", {"layers": [{"select": 0, "dropout": 1.0}]}, "layers[0].dropout",
     "less than 1"),
    # --- per-layer override selection -------------------------------------------------------
    ("select-int-out-of-range", {"layers": [{"select": 2, "norm": "rmsnorm"}]}, "layers[0].select",
     E("layer index 2 is out of range for n_layers 2 (allowed -2..1)")),
    ("select-list-out-of-range", {"layers": [{"select": [0, 5], "norm": "rmsnorm"}]},
     "layers[0].select", E("layer index 5 is out of range for n_layers 2 (allowed -2..1)")),
    ("select-negative-out-of-range", {"layers": [{"select": -3, "norm": "rmsnorm"}]},
     "layers[0].select", E("layer index -3 is out of range for n_layers 2 (allowed -2..1)")),
    ("select-range-start", {"layers": [{"select": {"start": 3}, "norm": "rmsnorm"}]},
     "layers[0].select", E("range 3:None is outside 0..2 (n_layers 2)")),
    ("select-range-stop", {"layers": [{"select": {"start": 0, "stop": 5}, "norm": "rmsnorm"}]},
     "layers[0].select", E("range 0:5 is outside 0..2 (n_layers 2)")),
    ("select-range-step-zero", {"layers": [{"select": {"start": 0, "step": 0}, "norm": "rmsnorm"}]},
     "layers[0].select", "step: .*greater than or equal to 1"),
    ("select-second-override", {"layers": [{"select": "odd", "norm": "rmsnorm"},
                                           {"select": [7], "norm": "rmsnorm"}]},
     "layers[1].select", E("layer index 7 is out of range")),
    ("select-word", {"layers": [{"select": "od", "norm": "rmsnorm"}]}, "layers[0].select",
     E("got 'od'; allowed: all, odd, even, an index, a list of indices or {start, stop, step}")
     + ".*" + E("did you mean 'odd'?")),
    ("select-word-even", {"layers": [{"select": "evn", "norm": "rmsnorm"}]}, "layers[0].select",
     E("did you mean 'even'?")),
    ("select-bool", {"layers": [{"select": True, "norm": "rmsnorm"}]}, "layers[0].select",
     E("got True; expected a layer index, not a boolean")),
    ("select-empty-list", {"layers": [{"select": [], "norm": "rmsnorm"}]}, "layers[0].select",
     E("got []; expected a non-empty list of layer indices")),
    ("select-float", {"layers": [{"select": 1.0, "norm": "rmsnorm"}]}, "layers[0].select",
     E("got 1.0; expected 'all', 'odd', 'even'")),
    # --- literals ----------------------------------------------------------------------------
    ("layout-literal", {"block__layout": "prenorm"}, "block.layout",
     E("got 'prenorm'; allowed: 'pre_norm', 'post_norm', 'parallel' or 'reordered_norm'; "
       "did you mean 'pre_norm'?")),
    ("override-layout-literal", {"layers": [{"select": 0, "layout": "postnorm"}]},
     "layers[0].layout", E("got 'postnorm'") + ".*" + E("did you mean 'post_norm'?")),
    ("pooling-literal", {"head": {"type": "classifier", "n_classes": 3, "pooling": "max"}},
     "head.pooling", E("got 'max'; allowed: 'cls', 'mean' or 'last'")),
    # --- positional parameters ---------------------------------------------------------------
    ("rope-fraction-zero", {"position": {"type": "rope", "fraction": 0}}, "position.fraction",
     "greater than 0.*" + E("got 0")),
    ("rope-fraction-above-one", {"position": {"type": "rope", "fraction": 1.5}},
     "position.fraction",
     "less than or equal to 1.*" + E("got 1.5")),
    ("rope-odd-rotary-dim", {"position": {"type": "rope", "fraction": 0.2}}, "position",
     E("int(8 * 0.2) = 1 dims, which must be even and positive") + ".*" + E("fraction: 0.25")),
    ("rope-dynamic-two-dims", {"position": {"type": "rope", "fraction": 0.25,
                                            "scaling": {"type": "dynamic", "factor": 2}}},
     "position", E("dynamic NTK scaling needs rotary_dim > 2")),
    ("rope-theta-negative", {"position": {"type": "rope", "theta": -1}}, "position.theta",
     "greater than 0"),
    ("rope-scaling-type", {"position": {"type": "rope", "scaling": {"type": "yarn", "factor": 4}}},
     "position.scaling.type", E("unknown type 'yarn'") + ".*linear.*dynamic.*llama3"),
    ("llama3-frequency-order", {"position": {"type": "rope", "scaling": {
        "type": "llama3", "low_freq_factor": 4, "high_freq_factor": 1}}}, "position.scaling",
     E("high_freq_factor (1.0) must be greater than low_freq_factor (4.0)")),
    ("relative-bias-distance", {"position": {"type": "relative_bias", "num_buckets": 32,
                                             "max_distance": 8}}, "position",
     E("max_distance (8) must be greater than num_buckets // 2 (16)")),
    # --- architecture ----------------------------------------------------------------------
    ("unknown-arch", {"arch": "decodr"}, "arch",
     E("unknown arch 'decodr'; allowed: decoder, encoder, seq2seq, vit; did you mean 'decoder'?")),
    ("unknown-arch-far", {"arch": "diffusion"}, "arch", E("unknown arch 'diffusion'; allowed: ")),
    ("extends-not-a-string", {"extends": 3}, "extends",
     E("expected a preset name or a file path, got 3")),
]


@pytest.mark.parametrize(("changes", "path", "message"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_broken_spec(registry, changes, path, message):
    with pytest.raises(SpecError, match=problem_line(path, message)) as info:
        load_spec(broken(**changes), registry=registry)
    assert_problem(info.value, path, message)
    assert isinstance(info.value, ValueError)


def test_non_string_key(registry):
    spec = broken()
    spec["block"][1] = "x"
    with pytest.raises(SpecError, match=r"keys should be strings; got 1"):
        load_spec(spec, registry=registry)


def test_case_ids_are_distinct():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 30


def test_the_same_mistake_in_yaml_text(registry):
    text = textwrap.dedent("""\
        arch: decoder
        vocab_size: 64
        d_model: 32
        n_layers: 2
        n_heads: 4
        block:
          ffn: {type: glu, activation: swish}
        """)
    with pytest.raises(SpecError, match=problem_line(
            "block.ffn.activation.type", E("unknown type 'swish'; allowed: gelu, gelu_tanh"))):
        load_spec(text, registry=registry)


def test_several_problems_are_reported_at_once(registry):
    spec = broken(
        vocab_size=0,
        n_head=3,
        block__norm="rmsnrom",
        block__ffn__hiden=3,
        block__attention__mask={"type": "sliding_window"},
        head={"type": "lmm"},
    )
    with pytest.raises(SpecError) as info:
        load_spec(spec, registry=registry)
    exc = info.value
    expected = {
        "vocab_size": "greater than 0",
        "n_head": "did you mean 'n_heads'",
        "block.norm.type": "did you mean 'rmsnorm'",
        "block.ffn.hiden": "did you mean 'hidden'",
        "block.attention.mask.window": "required field is missing",
        "head.type": "did you mean 'lm'",
    }
    for path, message in expected.items():
        assert_problem(exc, path, re.escape(message))
        assert re.search(problem_line(path, re.escape(message)), str(exc))
    assert len(exc.problems) == len(expected)
    assert str(exc).startswith(f"invalid spec ({len(expected)} problems):")


def test_both_head_checks_are_reported_together(registry):
    with pytest.raises(SpecError) as info:
        load_spec(broken(n_heads=5, n_kv_heads=3), registry=registry)
    assert [p.path for p in info.value.problems] == ["n_heads", "n_kv_heads"]


def test_problem_paths_are_strings_and_str_lists_every_problem(registry):
    with pytest.raises(SpecError) as info:
        load_spec(broken(d_model="x", n_layers=-1), registry=registry)
    lines = str(info.value).splitlines()[1:]
    assert lines == [f"  {p.path}: {p.message}" for p in info.value.problems]
    assert {p.path for p in info.value.problems} == {"d_model", "n_layers"}


# --- inputs that are not a spec mapping at all ---------------------------------------------


def test_malformed_yaml_gives_line_and_column(registry):
    text = "arch: decoder\nvocab_size: 64\nblock: {norm: [layernorm\n"
    with pytest.raises(SpecError, match=r"malformed YAML at line \d+, column \d+") as info:
        load_spec(text, registry=registry)
    assert info.value.problems[0].path == ""


def test_bad_indentation_gives_its_line(registry):
    text = "arch: decoder\n  vocab_size: 64\nd_model: 32\n"
    with pytest.raises(SpecError, match=r"malformed YAML at line 2, column 13: mapping values"):
        load_spec(text, registry=registry)


def test_malformed_yaml_file_names_the_file(registry, tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("arch: decoder\nblock:\n  norm: [\n", encoding="utf-8")
    with pytest.raises(SpecError, match=r"malformed YAML at line \d+, column \d+") as info:
        load_spec(path, registry=registry)
    assert str(path) in str(info.value).splitlines()[0]


@pytest.mark.parametrize("as_file", [False, True], ids=["text", "file"])
def test_python_yaml_tag_is_rejected_and_never_runs(registry, tmp_path, as_file):
    marker = tmp_path / "pwned"
    text = f'arch: !!python/object/apply:os.system ["echo hi > {marker}"]\nvocab_size: 64\n'
    source: Any = text
    if as_file:
        source = tmp_path / "evil.yaml"
        source.write_text(text, encoding="utf-8")
    with pytest.raises(SpecError, match=r"unsupported YAML tag at line 1, column 7.*python/object"):
        load_spec(source, registry=registry)
    assert not marker.exists()


@pytest.mark.parametrize("tag", [
    "!!python/name:os.system",
    "!!python/object/new:subprocess.Popen [['touch', 'x']]",
    "!!python/module:os",
])
def test_other_python_tags_are_rejected(registry, tag):
    with pytest.raises(SpecError, match="unsupported YAML tag"):
        load_spec(f"arch: decoder\nname: {tag}\n", registry=registry)


def test_top_level_list_yaml(registry):
    with pytest.raises(SpecError, match=r"a spec must be a mapping of fields, got list"):
        load_spec("- arch: decoder\n- vocab_size: 64\n", registry=registry)


def test_top_level_python_list(registry):
    with pytest.raises(SpecError, match=r"cannot load a spec from list; pass a path, text or dict"):
        load_spec([BASE], registry=registry)  # type: ignore[arg-type]


def test_top_level_scalar(registry):
    with pytest.raises(SpecError, match=r"a spec must be a mapping of fields, got int"):
        load_spec("42\n", registry=registry)


def test_empty_text(registry):
    with pytest.raises(SpecError, match=r"a spec must be a mapping of fields, got NoneType"):
        load_spec("", registry=registry)


def test_missing_spec_file(registry, tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(SpecError, match=rf"spec file not found: {re.escape(str(path))}"):
        load_spec(path, registry=registry)
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(str(path), registry=registry)


def test_malformed_json_file(registry, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"arch": "decoder",, "vocab_size": 64}', encoding="utf-8")
    with pytest.raises(SpecError,
                       match=r"malformed JSON at line 1, column 20: Expecting property name"):
        load_spec(path, registry=registry)


def test_json_file_with_wrong_field(registry, tmp_path):
    import json

    path = tmp_path / "bad.json"
    path.write_text(json.dumps(broken(n_kv_heads=3)), encoding="utf-8")
    with pytest.raises(SpecError, match=problem_line("n_kv_heads", E("not a multiple"))) as info:
        load_spec(path, registry=registry)
    assert info.value.source == str(path)


# --- extends ---------------------------------------------------------------------------------


def test_unknown_extends_preset(registry):
    with pytest.raises(SpecError, match=problem_line(
            "extends",
            E("unknown preset 'lama'; presets: ") + ".*llama.*" + E("did you mean 'llama'?"))):
        load_spec({"extends": "lama", "n_layers": 2}, registry=registry)


def test_extends_missing_file(registry, tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("extends: parent.yaml\nn_layers: 2\n", encoding="utf-8")
    with pytest.raises(SpecError, match=problem_line(
            "extends", E(f"file not found: {tmp_path / 'parent.yaml'}"))):
        load_spec(child, registry=registry)


def test_extends_cycle_between_two_files(registry, tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("extends: b.yaml\narch: decoder\n", encoding="utf-8")
    b.write_text("extends: a.yaml\nvocab_size: 64\n", encoding="utf-8")
    with pytest.raises(SpecError, match=problem_line("extends", "cycle: ")) as info:
        load_spec(a, registry=registry)
    message = info.value.problems[0].message
    assert str(a.resolve()) in message and str(b.resolve()) in message


def test_extends_self_is_a_cycle(registry, tmp_path):
    a = tmp_path / "self.yaml"
    a.write_text("extends: self.yaml\narch: decoder\n", encoding="utf-8")
    with pytest.raises(SpecError, match=problem_line("extends", "cycle")):
        load_spec(a, registry=registry)


def test_extends_a_file_that_is_not_a_mapping(registry, tmp_path):
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n", encoding="utf-8")
    child = tmp_path / "child.yaml"
    child.write_text("extends: list.yaml\n", encoding="utf-8")
    with pytest.raises(SpecError, match=problem_line("extends", "does not hold a mapping")):
        load_spec(child, registry=registry)


def test_extends_an_absolute_path_reads_nothing(registry, tmp_path, monkeypatch):
    secret = tmp_path / "elsewhere" / "secret.json"
    secret.parent.mkdir()
    secret.write_text('{"arch": "decoder", "api_key": "hunter2"}', encoding="utf-8")
    child = tmp_path / "child.yaml"
    child.write_text(f"extends: {secret}\nn_layers: 2\n", encoding="utf-8")
    monkeypatch.chdir(secret.parent)
    for source in (child, {"extends": str(secret)}):
        with pytest.raises(SpecError, match=problem_line(
                "extends", E(f"{str(secret)!r} is an absolute path; extends takes a preset name "
                             "or a path relative to the spec's folder"))) as info:
            load_spec(source, registry=registry)
        assert "hunter2" not in str(info.value) and "api_key" not in str(info.value)


def test_extends_a_file_from_a_spec_without_a_folder(registry, tmp_path, monkeypatch):
    (tmp_path / "base.yaml").write_text("arch: decoder\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # the working directory is not the spec's folder
    for source in ({"extends": "base.yaml"}, "extends: base.yaml\nn_layers: 2\n"):
        with pytest.raises(SpecError, match=problem_line(
                "extends", E("'base.yaml' is a file, but this spec was given as text or a "
                             "mapping, so it has no folder to resolve it against"))):
            load_spec(source, registry=registry)


def test_problem_in_the_extended_preset_child_reported_at_its_path(registry):
    message = E("n_heads 8 is not a multiple of n_kv_heads 3")
    with pytest.raises(SpecError, match=problem_line("n_kv_heads", message)):
        load_spec({"extends": "llama", "n_kv_heads": 3}, registry=registry)


# --- known bugs: these document library problems; strict, so a fix makes them fail --------


def test_missing_arch_lists_the_archs(registry):
    with pytest.raises(SpecError, match=problem_line("arch", "decoder, encoder, seq2seq, vit")):
        load_spec(broken(arch=DELETE), registry=registry)


def test_component_without_type_lists_the_types(registry):
    with pytest.raises(SpecError, match=problem_line("block.norm.type", "layernorm, rmsnorm")):
        load_spec(broken(block__norm={"eps": 1e-3}), registry=registry)


def test_select_range_typo_suggests_start(registry):
    with pytest.raises(SpecError, match=problem_line("layers[0].select",
                                                     E("did you mean 'start'?"))):
        load_spec(broken(layers=[{"select": {"strat": 1}, "norm": "rmsnorm"}]), registry=registry)


def _load_in_a_subprocess(spec: dict[str, Any], timeout: float) -> subprocess.CompletedProcess:
    """``load_spec(spec)`` in a child with 8 GiB of address space; prints the outcome."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))

    code = textwrap.dedent(f"""\
        from txblocks import load_spec, SpecError
        from txblocks.plugins import load_registry
        try:
            spec = load_spec({spec!r}, registry=load_registry(autoload=False))
        except SpecError as exc:
            print(exc)
        else:
            print("loaded", spec.n_layers)
        """)
    try:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=timeout, preexec_fn=limit, cwd=Path(__file__).parents[2])
    except subprocess.TimeoutExpired:
        pytest.fail(f"load_spec ran for over {timeout} s")


def test_huge_layer_count_with_select_all_does_not_crash():
    done = _load_in_a_subprocess(
        {**BASE, "n_layers": 10**11, "layers": [{"select": "all", "norm": "rmsnorm"}]}, timeout=30)
    assert "MemoryError" not in done.stderr
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(("loaded 100000000000", "invalid spec")), done.stdout


def test_large_d_model_does_not_hang():
    done = _load_in_a_subprocess({**BASE, "d_model": 1_000_000_007, "n_heads": 2},
                                 timeout=30)  # the import alone takes seconds on a busy machine
    assert done.returncode == 0, done.stderr
    assert "n_heads: d_model 1000000007 is not divisible by n_heads 2" in done.stdout
