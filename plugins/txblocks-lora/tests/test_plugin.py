"""The installed plugin end to end: entry point, CLI, spec validation, build through the hook."""

from __future__ import annotations

import importlib.metadata

import pytest
import torch
import txblocks
from txblocks import SpecError, cli, load_registry, load_spec
from txblocks.plugins import default_registry
from txblocks.spec import json_schema

import txblocks_lora
from txblocks_lora import LoRAConfig, LoRAError, LoRALinear

SPEC_YAML = """
arch: decoder
vocab_size: 61
max_seq_len: 16
d_model: 32
n_layers: 2
n_heads: 4
adapters: [{type: lora, rank: 4, targets: ["*.ffn.*"]}]
"""


def _squash(text: str) -> str:
    return "".join(text.split())


def test_listed_by_the_cli_with_its_distribution(fresh_default_registry, capsys):
    assert cli.main(["list", "adapter"]) == 0
    out = _squash(capsys.readouterr().out)
    version = importlib.metadata.version("txblocks-lora")
    assert f"│adapter│lora│txblocks-lora{version}│LoRA(Huetal.2021)" in out
    entry = default_registry().get("adapter", "lora")
    assert (entry.owner.name, entry.owner.version) == ("txblocks-lora", version)
    assert entry.config is LoRAConfig


def test_entry_point_names_the_plugin_module():
    (ep,) = tuple(importlib.metadata.entry_points(group="txblocks", name="lora"))
    assert ep.value == "txblocks_lora.plugin"
    assert ep.dist.metadata["Name"] == "txblocks-lora"


def test_builtins_only_registry_has_no_adapter(tiny):
    registry = load_registry(autoload=False)
    assert "adapter" not in registry.kinds()
    with pytest.raises(SpecError, match=r"adapters\[0\]: no adapter component is installed"):
        load_spec({**tiny, "adapters": [{"type": "lora"}]}, registry=registry)


def test_yaml_spec_validates_builds_and_trains(fresh_default_registry, seed, ids):
    spec = load_spec(SPEC_YAML)
    (adapter,) = spec.adapters
    assert isinstance(adapter, LoRAConfig) and adapter.type == "lora"
    assert (adapter.rank, adapter.alpha, adapter.dropout, adapter.targets, adapter.freeze_base) == (
        4, 16.0, 0.0, ["*.ffn.*"], True)
    assert load_spec(spec.to_yaml()) == spec
    torch.manual_seed(seed)
    model = txblocks.build(spec)
    layers = txblocks_lora.lora_layers(model)
    assert list(layers) == ["blocks.0.ffn.up", "blocks.0.ffn.down", "blocks.1.ffn.up",
                            "blocks.1.ffn.down"]
    assert all(isinstance(model.get_submodule(n), LoRALinear) for n in layers)
    out = model(ids)
    assert out.logits.shape == (2, 9, 61)
    out.logits.square().mean().backward()
    for name, param in model.named_parameters():
        if name.endswith(("lora_A", "lora_B")):
            assert param.grad is not None and torch.isfinite(param.grad).all(), name
        else:
            assert not param.requires_grad and param.grad is None, name
    # B starts at zero, so A gets no gradient yet, but B does.
    assert all(layer.lora_B.grad.abs().sum() > 0 for layer in layers.values())


def test_the_dtype_cast_reaches_the_adapters(tiny):
    model = txblocks.build({**tiny, "adapters": ["lora"]}, dtype=torch.float64)
    layer = model.blocks[0].attention.qkv
    assert isinstance(layer, LoRALinear)
    assert layer.lora_A.dtype == layer.lora_B.dtype == layer.weight.dtype == torch.float64


@pytest.mark.parametrize(("adapter", "path", "message"), [
    ({"type": "lora", "rank": 0}, "adapters[0].rank", "greater than or equal to 1; got 0"),
    ({"type": "lora", "alpha": 0}, "adapters[0].alpha", "greater than 0; got 0"),
    ({"type": "lora", "dropout": 1.0}, "adapters[0].dropout", "less than 1; got 1.0"),
    ({"type": "lora", "targets": []}, "adapters[0].targets", "at least 1 item"),
    ({"type": "lora", "targets": [""]}, "adapters[0].targets[0]", "at least 1 character"),
    ({"type": "lora", "rnak": 4}, "adapters[0].rnak", "unknown field 'rnak'; allowed fields: "
     "alpha, dropout, freeze_base, rank, targets, type; did you mean 'rank'?"),
    ({"type": "lroa"}, "adapters[0].type",
     "unknown type 'lroa'; allowed: lora; did you mean 'lora'?"),
])
def test_bad_adapter_fields_name_their_path(tiny, adapter, path, message):
    """Against a registry where lora is one of two adapters (the default registry has one: test below)."""
    registry = load_registry()

    class Other(txblocks.ComponentConfig):
        """Another adapter, so that the adapter union has two members."""

    registry.add("adapter", "other", lambda config: None, Other)
    with pytest.raises(SpecError) as info:
        load_spec({**tiny, "adapters": [adapter]}, registry=registry)
    problems = {p.path: p.message for p in info.value.problems}
    if "lroa" in message:
        message = message.replace("allowed: lora", "allowed: lora, other")
    assert path in problems, problems
    assert message in problems[path]


@pytest.mark.parametrize(("adapter", "path", "message"), [
    ({"type": "lora", "rank": 0}, "adapters[0].rank", "greater than or equal to 1"),
    ({"type": "lora", "rnak": 4}, "adapters[0].rnak", "did you mean 'rank'?"),
])
def test_bad_adapter_fields_with_the_default_registry(fresh_default_registry, tiny, adapter, path,
                                                      message):
    with pytest.raises(SpecError) as info:
        load_spec({**tiny, "adapters": [adapter]})
    problems = {p.path: p.message for p in info.value.problems}
    assert path in problems, problems
    assert message in problems[path]


def test_bad_adapter_field_is_a_spec_error_with_the_default_registry(fresh_default_registry, tiny):
    with pytest.raises(SpecError, match=r"adapters\[0\].*rank.*greater than or equal to 1"):
        load_spec({**tiny, "adapters": [{"type": "lora", "rank": 0}]})
    with pytest.raises(SpecError, match=r"adapters\[0\].*unknown field 'rnak'"):
        load_spec({**tiny, "adapters": [{"type": "lora", "rnak": 4}]})


def test_json_schema_describes_the_adapter(fresh_default_registry):
    schema = json_schema(default_registry())
    model = schema["$defs"]["AdapterLora"]
    props = model["properties"]
    assert props["type"]["const"] == "lora"
    assert props["rank"]["minimum"] == 1 and props["rank"]["default"] == 8
    assert props["alpha"]["exclusiveMinimum"] == 0 and props["alpha"]["default"] == 16
    assert props["dropout"]["exclusiveMaximum"] == 1
    assert props["targets"]["default"] == list(txblocks_lora.DEFAULT_TARGETS)
    assert model["additionalProperties"] is False


def test_a_target_that_matches_nothing_fails_the_build(tiny):
    spec = {**tiny, "adapters": [{"type": "lora"}, {"type": "lora", "targets": ["*.ffn.upp"]}]}
    with pytest.raises(LoRAError, match=(
            r"^adapters\[1\]\.targets\[0\]: '\*\.ffn\.upp' matches no nn\.Linear; linear modules "
            r"\(layer indices as \*\): blocks\.\*\.attention\.qkv, blocks\.\*\.attention\.out, "
            r"blocks\.\*\.ffn\.up, blocks\.\*\.ffn\.down, head\.proj; "
            r"did you mean '\*\.ffn\.up'\?$")):
        txblocks.build(spec)
    assert issubclass(LoRAError, txblocks.BuildError)


def test_several_adapters_apply_in_order(tiny):
    spec = {**tiny, "adapters": [{"type": "lora", "rank": 2, "targets": ["*.attention.*"]},
                                 {"type": "lora", "rank": 3, "alpha": 3, "targets": ["head.proj"]}]}
    model = txblocks.build(spec)
    ranks = {n: (m.rank, m.scaling) for n, m in txblocks_lora.lora_layers(model).items()}
    assert ranks == {"blocks.0.attention.qkv": (2, 8.0), "blocks.0.attention.out": (2, 8.0),
                     "blocks.1.attention.qkv": (2, 8.0), "blocks.1.attention.out": (2, 8.0),
                     "head.proj": (3, 1.0)}
    # The LM head is tied to the token embedding: the wrapper keeps the same parameter.
    assert model.head.proj.weight is model.embeddings.tokens.weight


def test_overlapping_adapters_are_refused(tiny):
    spec = {**tiny, "adapters": [{"type": "lora", "targets": ["*.ffn.up"]},
                                 {"type": "lora", "targets": ["blocks.1.*"]}]}
    with pytest.raises(LoRAError, match=r"adapters\[1\]\.targets: blocks\.\*\.ffn\.up already "
                                        r"has a LoRA adapter"):
        txblocks.build(spec)


def test_registered_factory_applies_the_config(fresh_default_registry, tiny):
    model = txblocks.build(tiny)
    applier = default_registry().config("adapter", "lora", rank=2, targets=["*.out"]).build()
    assert applier(model) == ["blocks.0.attention.out", "blocks.1.attention.out"]
    assert model.blocks[1].attention.out.rank == 2


def test_a_model_with_adapters_round_trips_through_a_txblocks_checkpoint(tiny, tmp_path, ids, gen):
    from txblocks.checkpoint import load, save

    model = txblocks.build({**tiny, "adapters": [{"type": "lora", "rank": 2}]}).eval()
    with torch.no_grad():
        for layer in txblocks_lora.lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen))
    save(model, tmp_path / "m.safetensors")
    again = load(tmp_path / "m.safetensors").eval()  # the spec's adapters are applied again
    assert list(txblocks_lora.lora_layers(again)) == list(txblocks_lora.lora_layers(model))
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_adapters_applied_from_python_are_recorded_in_the_spec(tiny, tmp_path, ids, gen):
    from txblocks.checkpoint import load, save

    model = txblocks.build(tiny).eval()
    assert model.spec.adapters == []
    txblocks_lora.apply_lora(model, rank=2, targets=["*.qkv"])
    assert [a.type for a in model.spec.adapters] == ["lora"]
    assert model.spec.adapters[0].rank == 2
    with torch.no_grad():
        for layer in txblocks_lora.lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen))
    save(model, tmp_path / "m.safetensors")
    again = load(tmp_path / "m.safetensors").eval()
    assert list(txblocks_lora.lora_layers(again)) == list(txblocks_lora.lora_layers(model))
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, model(ids).logits, rtol=0, atol=0)
