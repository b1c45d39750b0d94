"""The installed plugin: found through its entry point, usable from a YAML spec, the score
term passed through the stack (layer index, KV-cache offset, every kernel), refused where it
cannot run."""

from __future__ import annotations

import pytest
import torch
import txblocks_deberta

import txblocks
from txblocks import load_registry, load_spec
from txblocks.build import build_on_meta
from txblocks.hf import families
from txblocks.plugins import AUTOLOAD_ENV

DIST = "txblocks-deberta"

SPEC = """\
arch: encoder
name: deberta-tiny
vocab_size: 50
max_seq_len: 64
d_model: 32
n_layers: 2
n_heads: 4
position: {type: disentangled, position_buckets: 8, max_relative_positions: 16, norm_eps: 1.0e-7}
embedding: {norm: layernorm}
block:
  layout: post_norm
  attention: {kernel: eager, scale: 0.2041241452319315}
final_norm: false
head: {type: mlm}
"""


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    return load_registry()


def _spec(registry, **changes):
    data = load_spec(SPEC, registry=registry).model_dump(mode="json", exclude_none=True)
    for path, value in changes.items():
        *parents, last = path.split(".")
        node = data
        for part in parents:
            node = node[part]
        node[last] = value
    return load_spec(data, registry=registry)


def test_the_entry_point_registers_the_scheme_and_the_family(registry):
    owner = txblocks.Owner(DIST, txblocks_deberta.__version__)
    for kind, name in (("position", "disentangled"), ("hf_family", "deberta_v2")):
        entry = registry.get(kind, name)
        assert entry.owner == owner and entry.description
    assert families(registry)["deberta_v2"].model_type == "deberta-v2"
    builtins_only = load_registry(autoload=False)
    assert ("position", "disentangled") not in builtins_only


def test_the_spec_validates_and_round_trips(registry):
    spec = load_spec(SPEC, registry=registry)
    assert (spec.position.type, spec.position.terms, spec.position.share_att_key) == (
        "disentangled", ["c2p", "p2c"], True)
    assert load_spec(spec.to_yaml(), registry=registry) == spec


@pytest.mark.parametrize(("change", "match"), [
    ({"terms": []}, r"position\.terms: list should have at least 1 item"),
    ({"terms": ["c2p", "c2p"]}, "each term at most once"),
    ({"terms": ["p2p"]}, r"'c2p' or 'p2c'"),
    ({"position_buckets": 8, "max_relative_positions": 5}, "must exceed position_buckets"),
    ({"position_buckets": 1}, "0 \\(no buckets\\) or at least 2"),
])  # fmt: skip
def test_bad_parameters_are_spec_errors(registry, change, match):
    data = load_spec(SPEC, registry=registry).model_dump(mode="json", exclude_none=True)
    data["position"].update(change)
    with pytest.raises(txblocks.SpecError, match=match):
        load_spec(data, registry=registry)


def test_kernels_agree_forward_and_backward(registry, gen):
    """The score term is an ordinary tensor bias: sdpa gives eager's numbers and gradients."""
    ids = torch.randint(0, 50, (2, 30), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 20:] = 0
    results = []
    for kernel in ("eager", "sdpa", "auto"):
        torch.manual_seed(0)
        model = txblocks.build(_spec(registry, **{"block.attention.kernel": kernel}))
        model.eval()
        out = model(ids, attention_mask=mask).logits
        out[mask.bool()].logsumexp(-1).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results.append((out.detach(), grads))
    (want, want_grads), *others = results
    assert want_grads["position.rel_embeddings.weight"].abs().sum() > 0
    assert want_grads["position.norm.weight"].abs().sum() > 0
    for got, grads in others:
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        for name, grad in grads.items():
            torch.testing.assert_close(grad, want_grads[name], atol=1e-4, rtol=1e-4, msg=name)


def test_decoding_with_a_kv_cache_matches_the_full_forward(registry, gen):
    """A causal stack with the scheme: each step's score term sits at the cache offset."""
    spec = _spec(registry, arch="decoder", **{"head": {"type": "lm"}, "block.attention.mask": "causal"})
    model = txblocks.build(spec).eval()
    ids = torch.randint(0, 50, (2, 21), generator=gen)
    with torch.no_grad():
        full = model(ids).logits
        cache = model.new_cache(2, 21)
        steps = [model(ids[:, :9], cache=cache).logits]
        steps += [model(ids[:, t : t + 1], cache=cache).logits for t in range(9, 21)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_the_compiled_decoding_step_refuses_the_scheme(registry):
    from txblocks.generation.static_step import static_step_problems

    spec = _spec(registry, arch="decoder", **{"head": {"type": "lm"}, "block.attention.mask": "causal"})
    problems = static_step_problems(txblocks.build(spec))
    assert any("DisentangledPositions" in p and "compile=True supports" in p for p in problems)


def test_a_narrow_embedding_sum_is_refused_with_a_clear_error(registry):
    """With ``embedding.width`` and ``project_at: end`` the scheme would be built narrower than
    the layers' input; the build says so (on the meta device too), not a matmul at forward."""
    spec = _spec(registry, **{"embedding.width": 16, "embedding.project_at": "end"})
    match = "deberta-tiny: disentangled: the relative embeddings are 16 wide.*project_at: tokens"
    with pytest.raises(txblocks.BuildError, match=match):
        txblocks.build(spec)
    with pytest.raises(txblocks.BuildError, match=match):
        build_on_meta(spec)
    model = txblocks.build(_spec(registry, **{"embedding.width": 16, "embedding.project_at": "tokens"}))
    assert model(torch.zeros(1, 4, dtype=torch.long)).logits.shape == (1, 4, 50)
    scheme = model.position  # the forward's own check, for a model changed after its build
    assert scheme.width_problem(model.blocks[0].attention, 0) is None
    with pytest.raises(ValueError, match="relative embeddings are 32 wide, layer 1's attention takes 8"):
        scheme.positions(_narrowed(model.blocks[1].attention), 1)


def _narrowed(attention: torch.nn.Module) -> torch.nn.Module:
    """``attention`` with its query projection taking 8 features."""
    proj = attention.qkv if getattr(attention, "qkv", None) is not None else attention.q
    proj.in_features = 8
    return attention
