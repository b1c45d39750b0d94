"""The installed plugin: found through its entry point, listed, usable from a YAML spec."""

from __future__ import annotations

import pytest
import torch

import txblocks
import txblocks_lsh
from txblocks import SpecError, cli, load_registry, load_spec
from txblocks.plugins import AUTOLOAD_ENV
from txblocks.testing.listing import listed_rows

DIST = "txblocks-lsh"

SPEC = """\
arch: decoder
name: reformer-tiny
vocab_size: 50
max_seq_len: 64
d_model: 32
n_layers: 2
n_heads: 4
block:
  attention: {kernel: KERNEL, mask: causal}
"""
LSH = "{type: lsh, n_buckets: 4, n_hashes: 2, chunk: 4, seed: 1}"


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    return load_registry()


def spec_with(kernel: str, registry):
    return load_spec(SPEC.replace("KERNEL", kernel), registry=registry)


def test_the_entry_point_registers_the_kernel_with_its_distribution(registry):
    entry = registry.get("attention", "lsh")
    assert entry.owner == txblocks.Owner(DIST, txblocks_lsh.__version__)
    assert entry.description.startswith("Reformer LSH attention")
    assert ("attention", "lsh") not in load_registry(autoload=False)


def test_cli_lists_the_kernel_with_its_owner(capsys, fresh_default_registry):
    assert cli.main(["list", "attention", "l*"]) == 0
    rows = [row for row in listed_rows(capsys.readouterr().out) if row[1] == "lsh"]
    assert len(rows) == 1
    assert rows[0][:3] == ["attention", "lsh", f"{DIST} {txblocks_lsh.__version__}"]


def test_the_spec_validates_and_round_trips(registry):
    spec = spec_with(LSH, registry)
    kernel = spec.block.attention.kernel
    assert (kernel.type, kernel.n_buckets, kernel.n_hashes, kernel.chunk, kernel.seed) == (
        "lsh", 4, 2, 4, 1)
    assert load_spec(spec.to_yaml(), registry=registry) == spec
    with pytest.raises(SpecError, match=r"block\.attention\.kernel\.n_buckets: .*must be 1 or "
                                        r"even.*use 2 or 4"):
        spec_with("{type: lsh, n_buckets: 3}", registry)


def test_the_model_runs_forward_and_backward(registry, gen):
    model = txblocks.build(spec_with(LSH, registry))
    assert {type(b.attention.kernel).__name__ for b in model.blocks} == {"LSHKernel"}
    ids = torch.randint(0, 50, (2, 21), generator=gen)
    attention_mask = torch.ones_like(ids)
    attention_mask[1, :3] = 0  # left padding
    out = model(ids, attention_mask=attention_mask)
    assert out.logits.shape == (2, 21, 50) and torch.isfinite(out.logits).all()
    out.logits.logsumexp(-1).mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_one_bucket_model_equals_the_eager_model(registry, gen):
    exact = txblocks.build(spec_with("{type: lsh, n_buckets: 1, chunk: 64}", registry)).eval()
    eager = txblocks.build(spec_with("eager", registry)).eval()
    eager.load_state_dict(exact.state_dict())
    ids = torch.randint(0, 50, (2, 17), generator=gen)
    attention_mask = torch.ones_like(ids)
    attention_mask[0, :4] = 0
    with torch.no_grad():
        torch.testing.assert_close(exact(ids, attention_mask=attention_mask).logits,
                                   eager(ids, attention_mask=attention_mask).logits,
                                   atol=1e-5, rtol=1e-5)
