"""apply_lora on built models: targets, freezing, training, merging, base checkpoints."""

from __future__ import annotations

import pytest
import torch
import txblocks

import txblocks_lora
from txblocks_lora import LoRAError, LoRALinear, apply_lora, lora_layers, lora_parameters


def _perturb(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Give every adapter a random B, as after training."""
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen) * 0.1)


def _pair(spec: dict, adapters: list, seed: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The same base model built twice from one seed: without and with ``adapters``."""
    torch.manual_seed(seed)
    plain = txblocks.build(spec).eval()
    torch.manual_seed(seed)
    adapted = txblocks.build({**spec, "adapters": adapters}).eval()
    return plain, adapted


def test_a_fresh_adapter_changes_no_logit(tiny, seed, ids, gen):
    plain, adapted = _pair(tiny, [{"type": "lora", "rank": 4, "targets": ["*"]}], seed)
    assert len(lora_layers(adapted)) == 9  # 2 x (qkv, out, up, down) + head
    base = {k: v for k, v in adapted.state_dict().items() if not k.endswith(("lora_A", "lora_B"))}
    assert base.keys() == plain.state_dict().keys()
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(base[key], value, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(adapted(ids).logits, plain(ids).logits, rtol=0, atol=0)
        _perturb(adapted, gen)  # and the adapters are really on the forward path
        assert not torch.allclose(adapted(ids).logits, plain(ids).logits, atol=1e-4)


def test_a_training_step_changes_only_the_adapters(tiny, seed, ids):
    torch.manual_seed(seed)
    model = txblocks.build({**tiny, "adapters": [{"type": "lora", "rank": 2}]})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in lora_parameters(model)}
    optimizer = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.1)
    for _ in range(2):  # B moves first; then A gets a gradient too
        loss = torch.nn.functional.cross_entropy(model(ids).logits[:, :-1].flatten(0, 1),
                                                 ids[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for key, value in model.state_dict().items():
        if key.endswith(("lora_A", "lora_B")):
            assert not torch.equal(value, before[key]), key
        else:
            assert torch.equal(value, before[key]), key


def test_trainable_count_is_rank_times_in_plus_out(tiny):
    d, hidden, vocab, n_layers, r = 32, 128, 61, 2, 3
    adapters = [{"type": "lora", "rank": r, "targets": ["*.ffn.*", "*.attention.qkv", "head.*"]}]
    model = txblocks.build({**tiny, "adapters": adapters})
    per_layer = (d + hidden) + (hidden + d) + (d + 3 * d)  # up, down, qkv
    expected = r * (n_layers * per_layer + (d + vocab))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected
    assert sum(p.numel() for p in lora_parameters(model)) == expected


def test_default_targets_on_split_projections_with_gqa(tiny):
    spec = {**tiny, "n_kv_heads": 2, "block": {"attention": {"fused_qkv": False}}}
    model = txblocks.build({**spec, "adapters": [{"type": "lora", "rank": 5}]})
    names = list(lora_layers(model))
    assert names == [f"blocks.{i}.attention.{p}" for i in range(2) for p in ("q", "k", "v", "out")]
    d, kv = 32, 2 * 8
    expected = 5 * 2 * ((d + d) + 2 * (d + kv) + (d + d))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected


def test_freeze_base_false_keeps_the_base_trainable(tiny):
    model = txblocks.build({**tiny, "adapters": [{"type": "lora", "freeze_base": False}]})
    assert all(p.requires_grad for p in model.parameters())


def test_apply_lora_without_a_spec(tiny, ids, gen):
    model = txblocks.build(tiny).eval()
    with torch.no_grad():
        reference = model(ids).logits
    names = apply_lora(model, rank=2, alpha=4, targets=["blocks.1.ffn.down", "*.qkv"])
    assert names == ["blocks.0.attention.qkv", "blocks.1.attention.qkv", "blocks.1.ffn.down"]
    down = model.blocks[1].ffn.down
    assert isinstance(down, LoRALinear) and down.scaling == 2
    assert not isinstance(model.blocks[0].ffn.down, LoRALinear)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference, rtol=0, atol=0)


@pytest.mark.parametrize(("targets", "message"), [
    (["*.ffn.upp"], r"targets\[0\]: '\*\.ffn\.upp' matches no nn\.Linear; linear modules .*"
                    r"blocks\.\*\.ffn\.up, .*; did you mean '\*\.ffn\.up'\?"),
    (["*.qkv", "*.atention.out"], r"^targets\[1\]: '\*\.atention\.out' matches no nn\.Linear; .*"
                                  r"did you mean '\*\.attention\.out'\?$"),
    (["*.ffn"], r"'\*\.ffn' matches no nn\.Linear \(it matches blocks\.\*\.ffn, which are not "
                r"nn\.Linear\)"),
    (["BLOCKS.*"], r"'BLOCKS\.\*' matches no nn\.Linear; linear modules \(layer indices as \*\): "
                   r"blocks\.\*\.attention\.qkv, blocks\.\*\.attention\.out, blocks\.\*\.ffn\.up, "
                   r"blocks\.\*\.ffn\.down, head\.proj"),
])
def test_a_target_that_matches_nothing_is_an_error(tiny, targets, message):
    model = txblocks.build(tiny)
    with pytest.raises(LoRAError, match=message):
        apply_lora(model, targets=targets)
    assert not lora_layers(model)  # nothing was changed
    assert all(p.requires_grad for p in model.parameters())


def test_default_targets_that_match_nothing_are_an_error(tiny):
    model = txblocks.build({**tiny, "head": None})
    del model.blocks[0].attention.qkv, model.blocks[1].attention.qkv  # a model without attention
    for block in model.blocks:
        block.attention.out = torch.nn.Identity()
    with pytest.raises(LoRAError, match=r"targets: none of the default targets \(\*\.attention\.qkv"
                                        r".*\) matches an nn\.Linear; linear modules \(layer "
                                        r"indices as \*\): blocks\.\*\.ffn\.up, "
                                        r"blocks\.\*\.ffn\.down$"):
        apply_lora(model)


def test_a_base_checkpoint_loads_reporting_only_lora_keys_missing(tiny, seed, ids, gen):
    torch.manual_seed(seed + 1)
    base = txblocks.build(tiny).eval()
    model = txblocks.build({**tiny, "adapters": [{"type": "lora", "targets": ["*"]}]}).eval()
    result = model.load_state_dict(base.state_dict(), strict=False)
    lora_keys = set(txblocks_lora.lora_state_dict(model))
    assert len(lora_keys) == 18
    assert set(result.missing_keys) == lora_keys and result.unexpected_keys == []
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, base(ids).logits, rtol=0, atol=0)


def test_merge_then_unmerge_keeps_the_logits(tiny, seed, ids, gen):
    torch.manual_seed(seed)
    model = txblocks.build({**tiny, "adapters": [
        {"type": "lora", "rank": 4, "targets": ["*.attention.*", "*.ffn.*"]}]}).eval()
    _perturb(model, gen)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        reference = model(ids).logits
        assert len(txblocks_lora.merge(model)) == 8
        assert all(layer.merged for layer in lora_layers(model).values())
        qkv = model.blocks[0].attention.qkv
        torch.testing.assert_close(qkv.weight, weights["blocks.0.attention.qkv.weight"]
                                   + qkv.lora_B @ qkv.lora_A * qkv.scaling)
        torch.testing.assert_close(model(ids).logits, reference, rtol=1e-5, atol=1e-5)
        assert txblocks_lora.merge(model) == []  # already merged
        assert len(txblocks_lora.unmerge(model)) == 8
        for key, value in model.state_dict().items():
            torch.testing.assert_close(value, weights[key], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model(ids).logits, reference, rtol=1e-5, atol=1e-5)


def test_merging_a_tied_weight_is_refused(tiny, gen):
    model = txblocks.build({**tiny, "adapters": [{"type": "lora", "targets": ["head.proj"]}]})
    _perturb(model, gen)
    embedding = model.embeddings.tokens.weight.detach().clone()
    with pytest.raises(LoRAError, match=r"cannot merge head\.proj: the weight is shared"):
        txblocks_lora.merge(model)
    assert not model.head.proj.merged
    assert torch.equal(model.embeddings.tokens.weight, embedding)


def test_mark_only_lora_trainable(tiny):
    model = txblocks.build(tiny)
    with pytest.raises(LoRAError, match="no LoRA layer"):
        txblocks_lora.mark_only_lora_trainable(model)
    apply_lora(model, targets=["*.down"], freeze_base=False)
    assert all(p.requires_grad for p in model.parameters())
    txblocks_lora.mark_only_lora_trainable(model)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names == {f"blocks.{i}.ffn.down.lora_{m}" for i in range(2) for m in "AB"}
