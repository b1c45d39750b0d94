"""The installed plugin: found through its entry point, listed, usable from a YAML spec."""

from __future__ import annotations

import pytest
import torch

import txblocks
import txblocks_sparse
from txblocks import cli, load_registry, load_spec
from txblocks.plugins import AUTOLOAD_ENV
from txblocks.testing.listing import listed_rows

DIST = "txblocks-sparse"
COMPONENTS = [("mask", "longformer"), ("mask", "bigbird"), ("attention", "block_sparse")]

SPEC = """\
arch: decoder
name: sparse-tiny
vocab_size: 50
max_seq_len: 64
d_model: 32
n_layers: 2
n_heads: 4
n_kv_heads: 2
block:
  attention:
    kernel: block_sparse
    mask: {type: longformer, window: 4, causal: true, global_positions: [0],
           global_prefix: true, block_size: 4}
layers:
  - select: odd
    attention:
      mask: {type: bigbird, block_size: 4, window_blocks: 3, global_blocks: 1,
             random_blocks: 1, seed: 3, causal: true}
"""


def test_the_entry_point_registers_every_component_with_its_distribution(monkeypatch):
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    registry = load_registry()
    for kind, name in COMPONENTS:
        entry = registry.get(kind, name)
        assert entry.owner == txblocks.Owner(DIST, txblocks_sparse.__version__)
        assert entry.description
    builtins_only = load_registry(autoload=False)
    assert not any(key in builtins_only for key in COMPONENTS)


def _rows(out: str) -> dict[str, list[str]]:
    """name -> [kind, name, owner, description] from the CLI's table."""
    return {row[1]: row for row in listed_rows(out)}


@pytest.mark.parametrize("kind", ["attention", "mask"])
def test_cli_lists_the_components_with_their_owner(kind, capsys, fresh_default_registry):
    assert cli.main(["list", kind]) == 0
    rows = _rows(capsys.readouterr().out)
    for listed_kind, name in COMPONENTS:
        if listed_kind == kind:
            assert "".join(rows[name][2].split()) == f"{DIST}{txblocks_sparse.__version__}"
    assert rows["eager" if kind == "attention" else "causal"][2].startswith("txblocks")


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    return load_registry()


@pytest.fixture
def spec(registry):
    return load_spec(SPEC, registry=registry)


def test_the_spec_validates_and_round_trips(spec, registry):
    assert spec.block.attention.kernel.type == "block_sparse"
    assert spec.block_for(0).attention.mask.type == "longformer"
    mask = spec.block_for(1).attention.mask
    assert (mask.type, mask.block_size, mask.random_blocks, mask.seed) == ("bigbird", 4, 1, 3)
    assert load_spec(spec.to_yaml(), registry=registry) == spec


def test_the_model_runs_forward_and_backward_like_eager(spec, registry, gen):
    model = txblocks.build(spec)
    kernels = {type(b.attention.kernel).__name__ for b in model.blocks}
    assert kernels == {"BlockSparseKernel"}
    ids = torch.randint(0, 50, (2, 19), generator=gen)
    attention_mask = torch.ones_like(ids)
    attention_mask[1, :3] = 0  # left padding
    prefix = torch.tensor([2, 4])  # global_prefix: the first 2 / 4 tokens are global
    out = model(ids, attention_mask=attention_mask, prefix_lengths=prefix)
    assert out.logits.shape == (2, 19, 50) and torch.isfinite(out.logits).all()
    out.logits.logsumexp(-1).mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["blocks.0.attention.qkv.weight"].abs().sum() > 0

    data = spec.model_dump(mode="json", exclude_none=True)
    data["block"]["attention"]["kernel"] = "eager"
    eager = txblocks.build(load_spec(data, registry=registry))
    eager.load_state_dict(model.state_dict())
    model.eval(), eager.eval()
    with torch.no_grad():
        got = model(ids, attention_mask=attention_mask, prefix_lengths=prefix).logits
        want = eager(ids, attention_mask=attention_mask, prefix_lengths=prefix).logits
    assert {type(b.attention.kernel).__name__ for b in eager.blocks} == {"EagerKernel"}
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)



def test_decoding_with_a_kv_cache_matches_the_full_forward(spec, gen):
    """Causal longformer and bigbird layers see the same keys one token at a time."""
    model = txblocks.build(spec).eval()
    ids = torch.randint(0, 50, (2, 13), generator=gen)
    prefix = torch.tensor([2, 2])
    with torch.no_grad():
        full = model(ids, prefix_lengths=prefix).logits
        cache = model.new_cache(2, 13)
        steps = [model(ids[:, :6], prefix_lengths=prefix, cache=cache).logits]
        for t in range(6, 13):
            steps.append(model(ids[:, t : t + 1], prefix_lengths=prefix, cache=cache).logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
