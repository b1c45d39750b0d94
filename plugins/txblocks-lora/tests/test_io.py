"""Adapter files: safetensors with the adapter tensors only, and their config in the metadata."""

from __future__ import annotations

import json

import pytest
import torch
import txblocks
from safetensors import safe_open
from safetensors.torch import save_file

from txblocks_lora import (
    LoRAConfig,
    LoRAError,
    load_adapters,
    lora_layers,
    lora_state_dict,
    save_adapters,
)

ADAPTERS = [{"type": "lora", "rank": 3, "alpha": 6, "targets": ["*.ffn.up", "*.qkv"]},
            {"type": "lora", "rank": 2, "targets": ["head.proj"]}]


@pytest.fixture
def trained(tiny, seed, gen):
    """A model with two adapters whose A and B are random, and its base weights."""
    torch.manual_seed(seed)
    model = txblocks.build({**tiny, "adapters": ADAPTERS}).eval()
    with torch.no_grad():
        for p in lora_state_dict(model).values():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    base = {k: v for k, v in model.state_dict().items() if not k.endswith(("lora_A", "lora_B"))}
    return model, base


def _fresh(spec: dict, base: dict, adapters: list | None = None) -> torch.nn.Module:
    torch.manual_seed(12345)  # other base weights until the base is loaded
    model = txblocks.build({**spec, "adapters": adapters or []}).eval()
    model.load_state_dict(base, strict=False)
    return model


def test_file_holds_only_the_adapters_and_their_config(trained, tmp_path):
    model, _ = trained
    path = tmp_path / "adapters.safetensors"
    save_adapters(model, path)
    with safe_open(str(path), framework="pt") as f:
        keys, metadata = set(f.keys()), f.metadata()
        for key in keys:
            torch.testing.assert_close(f.get_tensor(key), model.state_dict()[key], rtol=0, atol=0)
    assert keys == {f"{m}.lora_{x}" for m in ("blocks.0.ffn.up", "blocks.1.ffn.up",
                    "blocks.0.attention.qkv", "blocks.1.attention.qkv", "head.proj") for x in "AB"}
    assert metadata["format"] == "txblocks-lora"
    configs = json.loads(metadata["configs"])
    assert [LoRAConfig.model_validate({k: v for k, v in c.items() if k != "type"})
            for c in configs] == [LoRAConfig(rank=3, alpha=6, targets=["*.ffn.up", "*.qkv"]),
                                  LoRAConfig(rank=2, targets=["head.proj"])]
    modules = json.loads(metadata["modules"])
    assert modules["head.proj"] == {"rank": 2, "alpha": 16.0, "dropout": 0.0, "config": 1}
    assert modules["blocks.1.ffn.up"]["config"] == 0
    raw = path.read_bytes()  # safetensors: u64 header length, then a JSON header (no pickle)
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    assert set(header) == keys | {"__metadata__"}


@pytest.mark.parametrize("with_adapters", [True, False], ids=["same-spec", "plain-model"])
def test_round_trip_into_a_fresh_model_gives_the_same_logits(tiny, trained, tmp_path, ids,
                                                             with_adapters):
    model, base = trained
    path = tmp_path / "a.safetensors"
    save_adapters(model, path)
    fresh = _fresh(tiny, base, ADAPTERS if with_adapters else None)
    with torch.no_grad():
        assert not torch.allclose(fresh(ids).logits, model(ids).logits, atol=1e-4)
        loaded = load_adapters(fresh, path)
        torch.testing.assert_close(fresh(ids).logits, model(ids).logits, rtol=0, atol=0)
    assert loaded == list(lora_layers(model))
    assert {n: (m.rank, m.alpha) for n, m in lora_layers(fresh).items()} == {
        n: (m.rank, m.alpha) for n, m in lora_layers(model).items()}
    trainable = {n for n, p in fresh.named_parameters() if p.requires_grad}
    assert trainable == set(lora_state_dict(model))


def test_loading_into_a_merged_model(tiny, trained, tmp_path, ids):
    model, base = trained
    save_adapters(model, tmp_path / "a.safetensors")
    fresh = _fresh(tiny, base, ADAPTERS)
    merged = [layer for name, layer in lora_layers(fresh).items() if name != "head.proj"]
    for layer in merged:  # the head's weight is tied: merge(fresh) would refuse
        layer.merge()
    with torch.no_grad():
        load_adapters(fresh, tmp_path / "a.safetensors")
        assert all(layer.merged for layer in merged)
        torch.testing.assert_close(fresh(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)
        for layer in merged:
            layer.unmerge()
        torch.testing.assert_close(fresh.state_dict(), model.state_dict(), rtol=1e-5, atol=1e-5)


def test_unexpected_adapters_are_listed(tiny, trained, tmp_path):
    model, base = trained
    save_adapters(model, tmp_path / "a.safetensors")
    fresh = _fresh(tiny, base, ADAPTERS[:1])
    with pytest.raises(LoRAError, match=r"\n  unexpected \(in the file, not in the model\): "
                                        r"head\.proj\.lora_A, head\.proj\.lora_B$"):
        load_adapters(fresh, tmp_path / "a.safetensors")


def test_mismatches_are_listed(tiny, trained, tmp_path):
    model, base = trained
    path = tmp_path / "a.safetensors"
    save_adapters(model, path)
    other = _fresh(tiny, base, [{**ADAPTERS[0], "rank": 4}, {**ADAPTERS[1], "alpha": 4},
                                {"type": "lora", "targets": ["*.ffn.down"]}])
    before = {k: v.clone() for k, v in lora_state_dict(other).items()}
    with pytest.raises(LoRAError) as info:
        load_adapters(other, path)
    lines = str(info.value).splitlines()
    assert lines[0] == f"cannot load adapters from {path}:"
    assert lines[1] == ("  missing (in the model, not in the file): blocks.0.ffn.down.lora_A, "
                        "blocks.0.ffn.down.lora_B, blocks.1.ffn.down.lora_A, "
                        "blocks.1.ffn.down.lora_B")
    assert len(lines) == 3 and lines[2].startswith("  mismatched: ")
    assert ("blocks.0.attention.qkv.lora_A (shape (3, 32) in the file, (4, 32) in the model)"
            in lines[2])
    assert "blocks.1.ffn.up.lora_B (shape (128, 3) in the file, (128, 4) in the model)" in lines[2]
    assert "head.proj (alpha/rank 16/2 in the file, 4/2 in the model)" in lines[2]
    for key, value in lora_state_dict(other).items():  # nothing was loaded
        assert torch.equal(value, before[key])


def test_a_plain_model_of_another_shape_is_refused(trained, tmp_path):
    model, _ = trained
    save_adapters(model, tmp_path / "a.safetensors")
    small = txblocks.build({"arch": "decoder", "vocab_size": 61, "d_model": 16, "n_layers": 1,
                            "n_heads": 2})
    with pytest.raises(LoRAError, match=r"blocks\.0\.ffn\.up \(in/out 32/128 in the file, 16/64 in "
                                        r"the model\).*blocks\.1\.ffn\.up \(no nn\.Linear of that "
                                        r"name in the model\)"):
        load_adapters(small, tmp_path / "a.safetensors")
    assert not lora_layers(small)


def test_not_an_adapter_file(tmp_path, tiny):
    path = tmp_path / "weights.safetensors"
    save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(LoRAError, match=r"is not a txblocks-lora adapter file"):
        load_adapters(txblocks.build(tiny), path)


def test_saving_a_model_without_adapters_is_refused(tmp_path, tiny):
    with pytest.raises(LoRAError, match="no LoRA layer: nothing to save"):
        save_adapters(txblocks.build(tiny), tmp_path / "a.safetensors")
