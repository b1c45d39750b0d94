"""The installed plugin: found through its entry point, listed, usable from a YAML spec."""

from __future__ import annotations

import pytest
import torch

import txblocks
import txblocks_linear
from txblocks import cli, load_registry, load_spec
from txblocks.plugins import AUTOLOAD_ENV
from txblocks.testing.listing import listed_rows

DIST = "txblocks-linear"
COMPONENTS = [("attention", "linear"), ("attention", "performer")]

SPEC = """\
arch: decoder
name: linear-tiny
vocab_size: 50
max_seq_len: 64
d_model: 32
n_layers: 2
n_heads: 4
n_kv_heads: 2
block:
  attention: {kernel: KERNEL, mask: causal}
"""
#: One spec per kernel (a per-layer override of `attention.kernel` is not validated by the
#: core yet: it stays a dict and the build fails).
KERNELS = {
    "linear": "{type: linear, chunk: 4}",
    "performer": "{type: performer, n_features: 16, redraw: true, seed: 1, chunk: 4}",
}


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    return load_registry()


@pytest.fixture(params=list(KERNELS))
def spec(request, registry):
    return load_spec(SPEC.replace("KERNEL", KERNELS[request.param]), registry=registry)


def test_the_entry_point_registers_every_component_with_its_distribution(registry):
    for kind, name in COMPONENTS:
        entry = registry.get(kind, name)
        assert entry.owner == txblocks.Owner(DIST, txblocks_linear.__version__)
        assert entry.description
    builtins_only = load_registry(autoload=False)
    assert not any(key in builtins_only for key in COMPONENTS)


def _rows(out: str) -> dict[str, list[str]]:
    """name -> [kind, name, owner, description] from the CLI's table."""
    return {row[1]: row for row in listed_rows(out)}


def test_cli_lists_the_kernels_with_their_owner(capsys, fresh_default_registry):
    assert cli.main(["list", "attention"]) == 0
    rows = _rows(capsys.readouterr().out)
    for _, name in COMPONENTS:
        assert "".join(rows[name][2].split()) == f"{DIST}{txblocks_linear.__version__}"
    assert rows["performer"][3].startswith("Performer FAVOR+")
    assert rows["sdpa"][2].startswith("txblocks")


def test_the_spec_validates_and_round_trips(spec, registry):
    kernel = spec.block_for(1).attention.kernel
    assert kernel.chunk == 4
    if kernel.type == "performer":
        assert (kernel.n_features, kernel.redraw, kernel.seed) == (16, True, 1)
    assert load_spec(spec.to_yaml(), registry=registry) == spec


def test_the_model_runs_forward_and_backward(spec, gen):
    model = txblocks.build(spec)
    kind = spec.block.attention.kernel.type
    name = {"linear": "LinearKernel", "performer": "PerformerKernel"}[kind]
    assert [type(b.attention.kernel).__name__ for b in model.blocks] == [name, name]
    ids = torch.randint(0, 50, (2, 11), generator=gen)
    attention_mask = torch.ones_like(ids)
    attention_mask[1, :3] = 0  # left padding
    out = model(ids, attention_mask=attention_mask)
    assert out.logits.shape == (2, 11, 50) and torch.isfinite(out.logits).all()
    out.logits.logsumexp(-1).mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["blocks.1.attention.qkv.weight"].abs().sum() > 0
    assert not any("kernel" in key for key in model.state_dict())  # nothing to checkpoint


def test_decoding_with_a_kv_cache_matches_the_full_forward(spec, gen):
    """Prefix sums are exactly causal: one token at a time gives the same logits."""
    model = txblocks.build(spec).eval()  # eval: the performer's projection stays fixed
    ids = torch.randint(0, 50, (2, 10), generator=gen)
    with torch.no_grad():
        full = model(ids).logits
        cache = model.new_cache(2, 10)
        steps = [model(ids[:, :4], cache=cache).logits]
        steps += [model(ids[:, t : t + 1], cache=cache).logits for t in range(4, 10)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_a_sliding_window_spec_fails_at_the_first_call_with_the_reason(registry):
    text = SPEC.replace("KERNEL", KERNELS["linear"])
    spec = load_spec(text.replace("mask: causal", "mask: {type: sliding_window, window: 4}"),
                     registry=registry)
    model = txblocks.build(spec)
    with pytest.raises(txblocks.KernelUnavailableError,
                       match=r"'linear' cannot run this call: sliding window \(window=4\)"):
        model(torch.zeros(1, 5, dtype=torch.long))
