"""Specs survive YAML/JSON/dict round trips; ``extends:`` and layer overrides do what they say."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import txblocks
from txblocks import SpecError, load_spec
from txblocks.attention.eager import EagerKernel
from txblocks.attention.strategies import CausalStrategy, SlidingWindowStrategy
from txblocks.nn.ffn import GLU, MLP
from txblocks.nn.norms import RMSNorm
from txblocks.spec import DecoderSpec, EncoderSpec, Seq2SeqSpec, VitSpec, preset_names

EXAMPLES = Path(__file__).parents[2] / "examples" / "specs"
SPECS = sorted(EXAMPLES.glob("*.yaml"))
ARCHS = {"decoder": DecoderSpec, "encoder": EncoderSpec, "seq2seq": Seq2SeqSpec, "vit": VitSpec}


def tiny(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "arch": "decoder", "vocab_size": 64, "max_seq_len": 32, "d_model": 32, "n_layers": 6,
        "n_heads": 4, "block": {"norm": "layernorm", "ffn": {"type": "mlp", "hidden": 64}},
    }
    base.update(changes)
    return base


def test_there_are_example_specs():
    assert {p.stem for p in SPECS} >= {"gpt2", "llama", "mistral", "bert-base"}


def test_every_example_is_a_preset():
    assert set(preset_names()) >= {p.stem for p in SPECS}


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_example_loads(registry, path):
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    spec = load_spec(path, registry=registry)
    assert isinstance(spec, ARCHS[spec.arch])
    assert spec.name == raw["name"]
    for key in ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len"):
        if key in raw:
            assert getattr(spec, key) == raw[key]
    assert spec.extends is None or spec.extends == raw.get("extends")


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_yaml_round_trip(registry, path):
    spec = load_spec(path, registry=registry)
    again = load_spec(spec.to_yaml(), registry=registry)
    assert again == spec
    assert "extends" not in yaml.safe_load(spec.to_yaml())  # the dump is self-contained


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_json_text_dict_and_path_inputs_agree(registry, path, tmp_path):
    from_path = load_spec(path, registry=registry)
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert load_spec(path.read_text(encoding="utf-8"), registry=registry) == from_path
    assert load_spec(str(path), registry=registry) == from_path
    assert load_spec(json.dumps(raw), registry=registry) == from_path
    assert load_spec(json.dumps(raw, indent=2), registry=registry) == from_path
    assert load_spec(raw, registry=registry) == from_path
    json_file = tmp_path / f"{path.stem}.json"
    json_file.write_text(json.dumps(raw), encoding="utf-8")
    assert load_spec(json_file, registry=registry) == from_path
    # The validated spec dumps to JSON and back without change.
    assert load_spec(from_path.model_dump_json(), registry=registry) == from_path
    assert load_spec(from_path.model_dump(mode="json"), registry=registry) == from_path


def test_load_spec_returns_a_spec_unchanged(registry):
    spec = load_spec(tiny(), registry=registry)
    assert load_spec(spec, registry=registry) is spec


def test_dict_input_is_not_mutated(registry):
    data = tiny(extends=None, layers=[{"select": "odd", "norm": "rmsnorm"}])
    before = json.dumps(data, sort_keys=True)
    load_spec(data, registry=registry)
    assert json.dumps(data, sort_keys=True) == before


def test_round_trip_keeps_non_default_fields(registry):
    spec = load_spec(tiny(
        position={"type": "rope", "theta": 500000.0, "fraction": 0.5,
                  "scaling": {"type": "llama3", "factor": 8.0}},
        n_kv_heads=2,
        embedding={"scale": "sqrt_d_model", "norm": {"type": "rmsnorm", "eps": 1e-3}},
        block={"layout": "parallel", "norm": "rmsnorm",
               "attention": {"kernel": "eager", "mask": {"type": "sliding_window", "window": 5},
                             "qk_norm": "rmsnorm", "softcap": 30.0, "bias": False},
               "ffn": {"type": "glu", "activation": "gelu_tanh", "hidden": 48}},
        layers=[{"select": {"start": 1, "step": 2}, "attention": {"mask": "causal"}},
                {"select": [-1], "ffn": "mlp"}],
        head={"type": "classifier", "n_classes": 3, "pooling": "mean"},
    ), registry=registry)
    text = spec.to_yaml()
    assert load_spec(text, registry=registry) == spec
    fragments = ("500000", "sqrt_d_model", "parallel", "window: 5", "softcap: 30", "n_classes: 3")
    for fragment in fragments:
        assert fragment in text


# --- extends ---------------------------------------------------------------------------------


@pytest.fixture
def base_file(tmp_path):
    path = tmp_path / "base.yaml"
    path.write_text(
        "arch: decoder\nname: base\nvocab_size: 64\nmax_seq_len: 64\nd_model: 32\nn_layers: 2\n"
        "n_heads: 4\nposition: {type: rope, theta: 500000}\n"
        "block:\n  norm: {type: rmsnorm, eps: 1.0e-3}\n"
        "  attention: {mask: causal, bias: false}\n"
        "  ffn: {type: glu, hidden: 64, activation: relu, bias: true}\n",
        encoding="utf-8",
    )
    return path


def test_extends_overrides_one_nested_field_and_keeps_the_rest(registry, base_file):
    child = base_file.parent / "child.yaml"
    child.write_text("extends: base.yaml\nname: child\nblock: {ffn: {hidden: 96}}\n",
                     encoding="utf-8")
    base, spec = load_spec(base_file, registry=registry), load_spec(child, registry=registry)
    assert spec.name == "child"
    assert spec.block.ffn.type == "glu" and spec.block.ffn.hidden == 96
    assert spec.block.ffn.activation.type == "relu" and spec.block.ffn.bias is True
    assert spec.block.norm == base.block.norm and spec.block.attention == base.block.attention
    assert spec.position == base.position and spec.position.theta == 500000
    assert spec.model_copy(update={"name": "base", "extends": None, "block": base.block}) == base


def test_extends_with_a_new_type_replaces_the_whole_component(registry, base_file):
    child = base_file.parent / "child.yaml"
    child.write_text("extends: base.yaml\nblock: {ffn: {type: mlp}}\n", encoding="utf-8")
    spec = load_spec(child, registry=registry)
    assert spec.block.ffn.type == "mlp"
    assert spec.block.ffn.hidden is None  # not the parent's 64
    assert spec.block.ffn.activation.type == "gelu"  # mlp's default, not the parent's relu
    assert spec.block.norm.eps == 1e-3


def test_extends_chain_and_relative_paths(registry, base_file):
    sub = base_file.parent / "sub"
    sub.mkdir()
    (sub / "middle.yaml").write_text("extends: ../base.yaml\nn_layers: 4\n", encoding="utf-8")
    (sub / "leaf.yaml").write_text(
        "extends: middle.yaml\nblock: {norm: {eps: 1.0e-6}}\n", encoding="utf-8"
    )
    spec = load_spec(sub / "leaf.yaml", registry=registry)
    assert spec.n_layers == 4 and spec.block.norm.type == "rmsnorm" and spec.block.norm.eps == 1e-6
    assert spec.block.ffn.hidden == 64


def test_extends_a_preset_from_a_dict(registry):
    llama = load_spec(EXAMPLES / "llama.yaml", registry=registry)
    spec = load_spec({"extends": "llama", "n_layers": 2, "name": "llama-2l"}, registry=registry)
    assert spec.n_layers == 2 and spec.name == "llama-2l"
    assert spec.model_copy(update={"n_layers": llama.n_layers, "name": llama.name,
                                   "extends": None}) == llama


def test_mistral_is_llama_with_a_sliding_window(registry):
    llama = load_spec(EXAMPLES / "llama.yaml", registry=registry)
    mistral = load_spec(EXAMPLES / "mistral.yaml", registry=registry)
    assert mistral.block.attention.mask.type == "sliding_window"
    assert mistral.block.attention.mask.window == 1024
    assert mistral.block.attention.bias is False  # kept from llama
    assert mistral.block.ffn == llama.block.ffn and mistral.n_kv_heads == llama.n_kv_heads
    assert mistral.position.theta == 10000 and llama.position.theta == 500000


def test_extends_overrides_a_field_of_a_shorthand_component(registry, tmp_path):
    (tmp_path / "base.yaml").write_text(
        "arch: decoder\nvocab_size: 64\nd_model: 32\nn_layers: 2\nn_heads: 4\nposition: rope\n",
        encoding="utf-8",
    )
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nposition: {theta: 1000}\n",
                                         encoding="utf-8")
    spec = load_spec(tmp_path / "child.yaml", registry=registry)
    assert spec.position.type == "rope" and spec.position.theta == 1000


# --- per-layer overrides -----------------------------------------------------------------


SELECTIONS = [
    ("all", {0, 1, 2, 3, 4, 5}),
    ("odd", {1, 3, 5}),
    ("even", {0, 2, 4}),
    (0, {0}),
    (-1, {5}),
    (-6, {0}),
    ([0, 2], {0, 2}),
    ([-1, -2, 1], {1, 4, 5}),
    ({"start": 1, "step": 3}, {1, 4}),
    ({"start": 2, "stop": 4}, {2, 3}),
    ({"step": 2}, {0, 2, 4}),
]


@pytest.mark.parametrize(("select", "expected"), SELECTIONS, ids=[str(s) for s, _ in SELECTIONS])
def test_override_changes_exactly_the_selected_layers(registry, select, expected):
    spec = load_spec(tiny(layers=[{"select": select, "norm": {"type": "rmsnorm", "eps": 1e-3}}]),
                     registry=registry)
    changed = {i for i in range(spec.n_layers) if spec.block_for(i).norm.type == "rmsnorm"}
    assert changed == expected
    for i in set(range(spec.n_layers)) - expected:
        unmasked = {"attention": {"mask"}}
        assert spec.block_for(i).model_dump(exclude=unmasked) == spec.block.model_dump(
            exclude=unmasked)
    model = txblocks.build(spec)
    built = {i for i, block in enumerate(model.blocks) if isinstance(block.norm1, RMSNorm)}
    assert built == expected
    assert all(isinstance(model.blocks[i].norm2, RMSNorm) for i in expected)


def test_sliding_window_on_odd_layers_and_a_wider_ffn_on_layer_zero(registry, gen):
    spec = load_spec(tiny(
        n_layers=4,
        block={"norm": "rmsnorm", "attention": {"bias": False},
               "ffn": {"type": "mlp", "hidden": 64, "activation": "silu"}},
        layers=[
            {"select": "odd", "attention": {"mask": {"type": "sliding_window", "window": 3}}},
            {"select": 0, "ffn": {"type": "mlp", "hidden": 96}},
        ],
    ), registry=registry)
    # block_for: the mask is overridden on odd layers only; the rest of attention is kept.
    masks = [spec.block_for(i).attention.mask for i in range(4)]
    assert [m.type for m in masks] == ["causal", "sliding_window", "causal", "sliding_window"]
    assert all(spec.block_for(i).attention.bias is False for i in range(4))
    assert [spec.block_for(i).ffn.hidden for i in range(4)] == [96, 64, 64, 64]
    # the shorthand override replaces the ffn: its activation is mlp's default again
    assert spec.block_for(0).ffn.activation.type == "gelu"
    assert spec.block_for(1).ffn.activation.type == "silu"
    assert spec.block.attention.mask is None  # the shared block itself is not changed

    model = txblocks.build(spec).eval()
    assert [type(m) for m in model.masks] == [CausalStrategy, SlidingWindowStrategy] * 2
    assert [getattr(m, "window", None) for m in model.masks] == [None, 3, None, 3]
    assert model.masks[1] is model.masks[3]  # equal masks share one strategy
    assert [b.ffn.up.out_features for b in model.blocks] == [96, 64, 64, 64]
    assert all(isinstance(b.ffn, MLP) for b in model.blocks)
    assert all(b.attention is not None for b in model.blocks)
    ids = torch.randint(0, 64, (2, 12), generator=gen)
    with torch.no_grad():
        out = model(ids, attention_mask=torch.ones_like(ids))
    assert out.logits.shape == (2, 12, 64) and torch.isfinite(out.logits).all()


def test_sliding_window_layer_ignores_tokens_outside_its_window(registry, gen):
    # One layer, window 1: each position sees only itself, so changing token 0 cannot change
    # the output at later positions (learned positions, no other mixing).
    spec = load_spec(tiny(n_layers=1, layers=[
        {"select": 0, "attention": {"mask": {"type": "sliding_window", "window": 1}}}]),
        registry=registry)
    model = txblocks.build(spec).eval()
    ids = torch.randint(1, 64, (1, 8), generator=gen)
    other = ids.clone()
    other[0, 0] = 0
    with torch.no_grad():
        a, b = model(ids).logits, model(other).logits
    torch.testing.assert_close(a[:, 1:], b[:, 1:])
    assert not torch.allclose(a[:, 0], b[:, 0])


def test_overrides_apply_in_order(registry):
    spec = load_spec(tiny(layers=[
        {"select": "all", "ffn": {"type": "glu", "hidden": 40}},
        {"select": [0, -1], "ffn": {"type": "mlp", "hidden": 24}},
        {"select": 0, "dropout": 0.5, "layout": "parallel"},
    ]), registry=registry)
    assert [spec.block_for(i).ffn.type for i in range(6)] == ["mlp"] + ["glu"] * 4 + ["mlp"]
    assert [spec.block_for(i).dropout for i in range(6)] == [0.5, 0, 0, 0, 0, 0]
    assert [spec.block_for(i).layout for i in range(6)] == ["parallel"] + ["pre_norm"] * 5
    model = txblocks.build(spec)
    assert [type(b.ffn) for b in model.blocks] == [MLP, GLU, GLU, GLU, GLU, MLP]
    assert model.blocks[1].ffn.hidden == 40 and model.blocks[0].ffn.up.out_features == 24
    assert model.blocks[0].layout == "parallel" and model.blocks[0].dropout.p == 0.5


@pytest.mark.parametrize(("arch", "mask"), [("decoder", "causal"), ("encoder", "none")])
def test_default_mask_depends_on_arch(registry, arch, mask):
    spec = load_spec(tiny(arch=arch, head=None), registry=registry)
    assert spec.block.attention.mask is None
    assert {spec.block_for(i).attention.mask.type for i in range(spec.n_layers)} == {mask}


def test_override_round_trips(registry):
    spec = load_spec(tiny(layers=[{"select": {"start": 1, "step": 2}, "ffn": "glu"},
                                  {"select": [-1], "norm": "rmsnorm"}]), registry=registry)
    again = load_spec(spec.to_yaml(), registry=registry)
    assert again == spec
    assert [again.block_for(i) for i in range(6)] == [spec.block_for(i) for i in range(6)]


def test_per_layer_kernel_and_bounds_are_validated_and_built(registry, gen):
    spec = load_spec(tiny(layers=[{"select": 1, "attention": {"kernel": "eager", "softcap": 30.0}}]),
                     registry=registry)
    model = txblocks.build(spec).eval()
    kernels = [type(b.attention.kernel) for b in model.blocks]
    assert kernels[1] is EagerKernel and kernels.count(EagerKernel) == 1
    with torch.no_grad():
        out = model(torch.randint(0, 64, (2, 9), generator=gen))
    assert torch.isfinite(out.logits).all()
    with pytest.raises(SpecError, match=r"layers\[0\]\.attention\.kernel.*'nope'"):
        load_spec(tiny(layers=[{"select": 1, "attention": {"kernel": "nope"}}]), registry=registry)
    with pytest.raises(SpecError, match=r"layers\[0\]\.attention\.dropout"):
        load_spec(tiny(layers=[{"select": 1, "attention": {"dropout": 1.5}}]), registry=registry)
