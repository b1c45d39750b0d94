"""The ``moe`` ffn against a token-by-token reference written here from the papers
(Switch Transformer, Mixtral, ST-MoE, Qwen2-MoE), and through a spec."""

from __future__ import annotations

import math

import pytest
import torch

import txblocks
from txblocks.errors import SpecError
from txblocks.nn.moe import MoE

TOL = dict(atol=1e-5, rtol=1e-5)
C = 12  # d_model


def _randomize(module: torch.nn.Module, gen: torch.Generator, scale: float = 0.5) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)


def _moe(registry, gen, **params) -> MoE:
    params.setdefault("expert", {"type": "glu", "hidden": 16})
    moe = registry.config("ffn", "moe", **params).build(C)
    _randomize(moe, gen)
    return moe


def _reference(moe: MoE, x: torch.Tensor, capacity: int | None = None,
               router_in: torch.Tensor | None = None) -> torch.Tensor:
    """Token by token: softmax over all experts, top-k, (renormalise), weighted sum of the
    chosen experts; with a capacity, an expert takes assignments first choices first, then
    in token order, until full."""
    flat = x.reshape(-1, x.shape[-1])
    router_flat = flat if router_in is None else router_in.reshape(flat.shape)
    n, k = flat.shape[0], moe.top_k
    choices = []
    for t in range(n):
        probs = torch.softmax(moe.router(router_flat[t]).float(), dim=-1)
        weights, experts = probs.topk(k)
        if moe.normalize_top_k:
            weights = weights / weights.sum()
        choices.append((experts.tolist(), weights))
    taken = [0] * moe.n_experts
    rows = [torch.zeros(flat.shape[-1]) for _ in range(n)]
    for rank in range(k):
        for t in range(n):
            e = choices[t][0][rank]
            if capacity is not None and taken[e] >= capacity:
                continue
            taken[e] += 1
            y = moe.experts[e](flat[t][None, None])[0, 0]
            rows[t] = rows[t] + choices[t][1][rank] * y
    for t in range(n):
        if moe.shared is not None:
            y = moe.shared(flat[t][None, None])[0, 0]
            if moe.shared_gate is not None:
                y = torch.sigmoid(moe.shared_gate(flat[t])) * y
            rows[t] = rows[t] + y
    return torch.stack(rows).reshape(x.shape)


CASES = [
    dict(experts=4, top_k=1, normalize_top_k=False),
    dict(experts=4, top_k=1, normalize_top_k=True),
    dict(experts=4, top_k=2, normalize_top_k=False),
    dict(experts=4, top_k=2, normalize_top_k=True),
    dict(experts=5, top_k=2, normalize_top_k=True, shared_experts=2,
         expert={"type": "mlp", "hidden": 8}),
    dict(experts=4, top_k=2, normalize_top_k=False, shared_experts=1, shared_hidden=20,
         shared_gate=True),
    dict(experts=3, top_k=3, normalize_top_k=False, router_bias=True),
]


@pytest.mark.parametrize("params", CASES, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()
                                                                   if k != "expert"))
def test_matches_token_by_token_reference(registry, gen, params):
    moe = _moe(registry, gen, **params)
    x = torch.randn(3, 7, C, generator=gen)
    out, aux = moe(x)
    torch.testing.assert_close(out, _reference(moe, x), **TOL)
    assert aux.shape == () and aux.dtype == torch.float32


def test_weight_names_and_shapes(registry, gen):
    moe = _moe(registry, gen, experts=3, top_k=2, shared_experts=1, shared_gate=True,
               router_bias=True)
    shapes = {name: tuple(p.shape) for name, p in moe.named_parameters()}
    assert shapes["router.weight"] == (3, C) and shapes["router.bias"] == (3,)
    assert shapes["experts.2.gate_up.weight"] == (32, C)
    assert shapes["experts.2.down.weight"] == (C, 16)
    assert shapes["shared.gate_up.weight"] == (32, C)  # one shared expert: a copy of the expert
    assert shapes["shared_gate.weight"] == (1, C)
    fused = _moe(registry, gen, experts=3, top_k=1, shared_experts=3)
    assert tuple(fused.shared.down.weight.shape) == (C, 48)  # 3 shared experts fused: 3 · 16
    assert fused.shared_gate is None


@pytest.mark.parametrize("top_k,normalize", [(1, False), (2, True), (2, False)])
def test_gradients_match_reference(registry, gen, top_k, normalize):
    moe = _moe(registry, gen, experts=4, top_k=top_k, normalize_top_k=normalize,
               shared_experts=1, shared_gate=True, aux_loss_coef=0.0)
    x = torch.randn(2, 5, C, generator=gen, requires_grad=True)
    upstream = torch.randn(2, 5, C, generator=gen)
    out, _ = moe(x)
    inputs = [x, *moe.parameters()]
    grads = torch.autograd.grad((out * upstream).sum(), inputs, allow_unused=True)
    ref = _reference(moe, x)
    ref_grads = torch.autograd.grad((ref * upstream).sum(), inputs, allow_unused=True)
    names = ["input", *(n for n, _ in moe.named_parameters())]
    for name, g, r in zip(names, grads, ref_grads, strict=True):
        if r is None:  # an expert that no token chose
            assert g is None or torch.count_nonzero(g) == 0, name
            continue
        torch.testing.assert_close(g, r, **TOL, msg=lambda m, name=name: f"{name}: {m}")
    assert torch.count_nonzero(grads[names.index("router.weight")]) > 0


# ---------------------------------------------------------------- Switch capacity


@pytest.mark.parametrize("top_k", [1, 2])
def test_capacity_drops_overflow(registry, gen, top_k):
    n_experts, factor = 4, 0.5
    moe = _moe(registry, gen, experts=n_experts, top_k=top_k, capacity_factor=factor)
    x = torch.randn(2, 12, C, generator=gen)
    capacity = math.ceil(factor * 24 * top_k / n_experts)
    out, _ = moe(x)
    stats = moe.last_stats
    assert stats.capacity == capacity
    assert (stats.kept <= capacity).all()
    assert torch.equal(stats.kept, stats.routed.clamp(max=capacity))
    assert int(stats.routed.sum()) == 24 * top_k and stats.dropped > 0
    torch.testing.assert_close(out, _reference(moe, x, capacity=capacity), **TOL)
    if top_k == 1:  # a dropped token gets exactly zero from the experts
        flat, ref_full = out.reshape(-1, C), _reference(moe, x).reshape(-1, C)
        zero = (flat == 0).all(dim=-1)
        assert int(zero.sum()) == stats.dropped
        assert (ref_full[zero] != 0).any(dim=-1).all()  # ... and would not be without capacity


def test_large_capacity_drops_nothing(registry, gen):
    moe = _moe(registry, gen, experts=4, top_k=2, capacity_factor=4.0)  # capacity = all assignments
    x = torch.randn(2, 9, C, generator=gen)
    out, _ = moe(x)
    assert moe.last_stats.dropped == 0
    moe.capacity_factor = None
    torch.testing.assert_close(out, moe(x)[0], atol=0, rtol=0)


# ---------------------------------------------------------------- auxiliary losses


def _routing(moe, x):
    logits = moe.router(x.reshape(-1, C)).float()
    probs = logits.softmax(-1)
    return logits, probs, probs.topk(moe.top_k, dim=-1).indices


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_load_balancing_loss_formula(registry, gen, top_k):
    n_experts, coef = 5, 0.03
    moe = _moe(registry, gen, experts=n_experts, top_k=top_k, aux_loss_coef=coef)
    x = torch.randn(3, 8, C, generator=gen)
    _, aux = moe(x)
    _, probs, chosen = _routing(moe, x)
    n = probs.shape[0]
    expected = 0.0
    for e in range(n_experts):
        f = sum(int(e in chosen[t].tolist()) for t in range(n)) / n  # assignments to e / tokens
        p = probs[:, e].mean()
        expected = expected + f * p
    torch.testing.assert_close(aux, coef * n_experts * expected, **TOL)


def test_load_balancing_loss_skips_padding(registry, gen):
    moe = _moe(registry, gen, experts=4, top_k=2, aux_loss_coef=1.0, z_loss_coef=0.1)
    x = torch.randn(2, 6, C, generator=gen)
    mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3]).bool()
    _, aux_masked = moe(x, mask)
    real = torch.cat([x[0], x[1, :3]])[None]  # only the real tokens
    _, aux_real = moe(real)
    torch.testing.assert_close(aux_masked, aux_real, **TOL)
    assert not torch.allclose(aux_masked, moe(x)[1])


@pytest.mark.parametrize("top_k", [1, 2])
def test_uniform_router_gives_balanced_value(registry, gen, top_k):
    coef = 0.01
    moe = _moe(registry, gen, experts=4, top_k=top_k, aux_loss_coef=coef)
    torch.nn.init.zeros_(moe.router.weight)  # every probability 1/E
    _, aux = moe(torch.randn(2, 8, C, generator=gen))
    torch.testing.assert_close(aux, torch.tensor(coef * top_k), **TOL)  # coef · 1 for top-1


def test_balanced_top1_is_minimum_and_collapse_is_maximum(registry, gen):
    n_experts = 4
    moe = _moe(registry, gen, experts=n_experts, top_k=1, aux_loss_coef=1.0, expert="mlp")
    with torch.no_grad():  # token t -> expert t mod E with probability ~1: balanced
        moe.router.weight.copy_(torch.eye(n_experts, C) * 50)
    x = torch.eye(C)[torch.arange(8) % n_experts][None]
    torch.testing.assert_close(moe(x)[1], torch.tensor(1.0), atol=1e-4, rtol=0)
    collapsed = torch.eye(C)[torch.zeros(8, dtype=torch.long)][None]  # every token -> expert 0
    torch.testing.assert_close(moe(collapsed)[1], torch.tensor(float(n_experts)), atol=1e-4, rtol=0)


def test_z_loss_formula(registry, gen):
    moe = _moe(registry, gen, experts=6, top_k=2, aux_loss_coef=0.0, z_loss_coef=0.25)
    x = torch.randn(2, 7, C, generator=gen)
    _, aux = moe(x)
    logits, _, _ = _routing(moe, x)
    expected = 0.25 * (torch.log(torch.exp(logits).sum(-1)) ** 2).mean()
    torch.testing.assert_close(aux, expected, **TOL)
    both = _moe(registry, gen, experts=6, top_k=2, aux_loss_coef=0.0, z_loss_coef=0.0)
    assert both(x)[1].item() == 0.0


def test_aux_loss_in_eval_mode_and_gradient_to_router(registry, gen):
    moe = _moe(registry, gen, experts=4, top_k=2, normalize_top_k=True, z_loss_coef=0.1).eval()
    x = torch.randn(2, 5, C, generator=gen)
    _, aux = moe(x)
    assert aux.item() > 0
    aux.backward()
    assert torch.count_nonzero(moe.router.weight.grad) > 0


def test_jitter_only_in_training_and_only_on_the_router(registry, gen):
    moe = _moe(registry, gen, experts=4, top_k=2, jitter=0.3)
    x = torch.randn(2, 6, C, generator=gen)
    moe.eval()
    torch.testing.assert_close(moe(x)[0], _reference(moe, x), **TOL)
    moe.train()
    seed = int(torch.randint(0, 2**31, (1,), generator=gen))
    torch.manual_seed(seed)
    out, _ = moe(x)
    torch.manual_seed(seed)
    noise = torch.empty_like(x.reshape(-1, C)).uniform_(0.7, 1.3)
    expected = _reference(moe, x, router_in=x.reshape(-1, C) * noise)
    torch.testing.assert_close(out, expected, **TOL)
    assert not torch.allclose(out, _reference(moe, x), atol=1e-4)


# ---------------------------------------------------------------- config errors


@pytest.mark.parametrize("params,path,match", [
    (dict(experts=2, top_k=3), "top_k", "top_k 3 is larger than experts 2"),
    (dict(expert={"type": "moe", "experts": 2, "top_k": 1}), "expert",
     "cannot be the expert of a moe"),
    (dict(shared_experts=2, expert="glu"), "", "set expert.hidden or shared_hidden"),
    (dict(shared_gate=True), "", "need shared_experts >= 1"),
    (dict(experts=0), "experts", "greater than or equal to 1"),
    (dict(jitter=1.5), "jitter", "less than 1"),
])
def test_config_errors(registry, params, path, match):
    with pytest.raises(SpecError, match=match) as info:
        registry.config("ffn", "moe", **params)
    assert info.value.problems[0].path == path


# ---------------------------------------------------------------- through a spec


def _spec(**moe):
    moe = {"type": "moe", "experts": 4, "top_k": 2, "expert": {"type": "glu", "hidden": 24}, **moe}
    return {
        "arch": "decoder", "vocab_size": 40, "max_seq_len": 16, "d_model": 16, "n_layers": 4,
        "n_heads": 2, "position": "rope", "block": {"norm": "rmsnorm", "ffn": "glu"},
        "layers": [{"select": "odd", "ffn": moe}],
    }


def test_spec_builds_interleaved_moe(registry, gen):
    spec = txblocks.load_spec(_spec(aux_loss_coef=0.02, z_loss_coef=0.001), registry=registry)
    model = txblocks.build(spec)
    moes = [m for m in model.modules() if isinstance(m, MoE)]
    assert len(moes) == 2  # layers 1 and 3
    layer_aux = []
    for m in moes:
        m.register_forward_hook(lambda mod, args, out: layer_aux.append(out[1]))
    ids = torch.randint(0, 40, (2, 7), generator=gen)
    out = model(ids)
    assert out.aux_loss is not None and out.aux_loss.item() > 0
    torch.testing.assert_close(out.aux_loss, torch.stack(layer_aux).sum(), **TOL)
    (out.logits.square().mean() + out.aux_loss).backward()
    for m in moes:
        assert torch.count_nonzero(m.router.weight.grad) > 0
        grads = [e.gate_up.weight.grad for e in m.experts]
        assert any(g is not None and torch.count_nonzero(g) > 0 for g in grads)


def test_spec_rejects_nested_moe(registry):
    spec = _spec(expert={"type": "moe", "experts": 2, "top_k": 1})
    with pytest.raises(SpecError, match=r"layers\[0\]\.ffn\.expert: a moe cannot be the expert"):
        txblocks.load_spec(spec, registry=registry)


def test_spec_reports_top_k_path(registry):
    match = r"layers\[0\]\.ffn\.top_k: top_k 5 is larger than experts 4"
    with pytest.raises(SpecError, match=match):
        txblocks.load_spec(_spec(top_k=5), registry=registry)


def test_padding_is_left_out_of_the_aux_loss_inside_a_model(registry, gen):
    """The model hands its attention mask to the MoE: padded tokens do not count."""
    spec = {"arch": "decoder", "vocab_size": 40, "d_model": 16, "n_layers": 1, "n_heads": 2,
            "block": {"ffn": {"type": "moe", "experts": 4, "top_k": 2,
                              "expert": {"type": "mlp", "hidden": 8}}}}
    model = txblocks.build(txblocks.load_spec(spec, registry=registry)).eval()
    ids = torch.randint(0, 40, (1, 5), generator=gen)
    padded = torch.cat([ids, torch.randint(0, 40, (1, 3), generator=gen)], dim=1)
    mask = torch.tensor([[1] * 5 + [0] * 3])
    with torch.no_grad():
        alone = model(ids).aux_loss
        masked = model(padded, attention_mask=mask).aux_loss
        unmasked = model(padded).aux_loss
    torch.testing.assert_close(masked, alone)
    assert not torch.allclose(unmasked, alone)
