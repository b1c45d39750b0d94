"""Activation checkpointing changes memory, not numbers: the same loss and gradients (1e-6),
the same state_dict names, and generation (no gradients, a KV cache) still works."""

from __future__ import annotations

import copy

import pytest
import torch

import txblocks
import txblocks.train.checkpointing as checkpointing
from txblocks import train
from txblocks.train import disable_activation_checkpointing, enable_activation_checkpointing

from .conftest import tiny

MOE = {"type": "moe", "experts": 4, "top_k": 2, "aux_loss_coef": 0.01, "jitter": 0.1,
       "expert": {"type": "mlp", "hidden": 32}}
DROPOUT = {"norm": "layernorm", "ffn": {"type": "mlp", "hidden": 64, "dropout": 0.2},
           "attention": {"dropout": 0.1}, "dropout": 0.1}
SPECS = {
    "decoder-dropout": tiny("decoder", block=DROPOUT, position="rope"),
    "decoder-moe-jitter": tiny("decoder", block={"norm": "rmsnorm", "ffn": MOE}),
    "seq2seq": tiny("seq2seq", block=DROPOUT, position="relative_bias"),
    "vit": tiny("vit", image_size=8, patch_size=2, block=DROPOUT),
}


def _loss_and_grads(model: torch.nn.Module, arch: str, seed: int) -> tuple[torch.Tensor, dict]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the same dropout / jitter draws in both runs
    g = torch.Generator().manual_seed(1)
    if arch == "vit":
        out = model(torch.randn(3, 1, 8, 8, generator=g))
    else:
        ids = torch.randint(0, 128, (3, 10), generator=g)
        mask = torch.ones_like(ids)
        mask[0, 7:] = 0
        if arch == "seq2seq":
            out = model(ids, mask, decoder_input_ids=ids[:, :6])
        else:
            out = model(ids, attention_mask=mask)
    loss = out.logits.float().pow(2).mean()
    if out.aux_loss is not None:
        loss = loss + out.aux_loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                           if p.grad is not None}


@pytest.mark.parametrize("name", list(SPECS))
def test_same_gradients_with_and_without_checkpointing(registry, name, monkeypatch):
    spec = txblocks.load_spec(SPECS[name], registry=registry)
    model = txblocks.build(spec).train()
    names = list(model.state_dict())
    loss, grads = _loss_and_grads(model, spec.arch, seed=7)

    calls = []
    real = checkpointing.checkpoint
    monkeypatch.setattr(checkpointing, "checkpoint",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    n_blocks = spec.n_layers * (2 if spec.arch == "seq2seq" else 1)
    assert enable_activation_checkpointing(model) == n_blocks
    assert enable_activation_checkpointing(model) == n_blocks  # idempotent
    assert list(model.state_dict()) == names
    loss2, grads2 = _loss_and_grads(model, spec.arch, seed=7)
    assert len(calls) == n_blocks  # every block ran under checkpoint, once
    torch.testing.assert_close(loss2, loss, atol=1e-6, rtol=0)
    assert grads2.keys() == grads.keys() and grads
    for key in grads:
        torch.testing.assert_close(grads2[key], grads[key], atol=1e-6, rtol=1e-6, msg=key)


def test_generation_and_no_grad_calls_skip_checkpointing(registry, monkeypatch):
    model = txblocks.build(txblocks.load_spec(tiny("decoder"), registry=registry)).eval()
    prompt = torch.tensor([[5, 6, 7]])
    expected = model.generate(prompt, max_new_tokens=5)
    enable_activation_checkpointing(model)
    monkeypatch.setattr(checkpointing, "checkpoint",
                        lambda *a, **k: pytest.fail("checkpoint called without gradients"))
    assert torch.equal(model.generate(prompt, max_new_tokens=5), expected)


def test_copies_stay_checkpointed_and_disable_restores(registry):
    model = txblocks.build(txblocks.load_spec(tiny("decoder"), registry=registry))
    enable_activation_checkpointing(model)
    clone = copy.deepcopy(model)
    assert all(b.forward.__self__ is b for b in clone.blocks)  # bound to the copy, not the original
    torch.testing.assert_close(clone(torch.tensor([[1, 2, 3]])).logits,
                               model(torch.tensor([[1, 2, 3]])).logits)
    assert disable_activation_checkpointing(model) == 2
    assert all("forward" not in vars(b) for b in model.blocks)
    assert disable_activation_checkpointing(model) == 0


def test_a_checkpointed_run_follows_the_same_losses(quiet):
    spec = SPECS["decoder-dropout"]
    settings = {"task": "copy", "steps": 8, "batch_size": 8, "lr": 1e-2, "console": quiet,
                "eval_examples": 2, "show": 0}
    plain = train.run(spec, **settings)
    checkpointed = train.run(spec, activation_checkpointing=True, **settings)
    torch.testing.assert_close(torch.tensor(checkpointed.losses), torch.tensor(plain.losses),
                               atol=1e-5, rtol=0)
    assert plain.losses[0] != plain.losses[-1]
    assert all("forward" not in vars(b) for b in checkpointed.model.blocks)  # undone after
