"""``performer`` (FAVOR+): approaches softmax attention as features grow; its causal form
equals the quadratic form of the same feature map; redraw, seeds and padding.

Shapes: B batch, T length, H = 4 query heads, Hkv = 2 kv heads, D = 8, M features.
"""

from __future__ import annotations

import pytest
import torch

from txblocks.attention import AttentionCall, CausalMask, EagerKernel, FullMask
from txblocks_linear import LinearKernel, PerformerKernel, favor_features, orthogonal_gaussian

H, HKV, D = 4, 2, 8
SCALE = D**-0.5


def qkv(gen, batch=2, t=16, q_len=None):
    q = 0.5 * torch.randn(batch, q_len or t, H, D, generator=gen)
    k = 0.5 * torch.randn(batch, t, HKV, D, generator=gen)
    v = torch.randn(batch, t, HKV, D, generator=gen)
    return q, k, v


def relative_error(kernel, mask, q, k, v):
    got = kernel(q, k, v, mask, scale=SCALE)
    want = EagerKernel()(q, k, v, mask, scale=SCALE)
    return float((got - want).norm() / want.norm())


@pytest.mark.parametrize("mask", [FullMask(16, 16), CausalMask(16, 16), CausalMask(6, 16)],
                         ids=["full", "causal", "cache"])
def test_error_to_softmax_falls_as_features_grow(mask, gen):
    q, k, v = qkv(gen, q_len=mask.q_len)
    errors = []
    for n in (16, 256, 4096):  # mean over four seeds: Monte-Carlo error ~ 1/sqrt(M)
        runs = [relative_error(PerformerKernel(n, seed=s).eval(), mask, q, k, v) for s in range(4)]
        errors.append(sum(runs) / len(runs))
    # 16x the features: ideally 1/4 the error; worst seen over 120 random inputs: 0.59
    assert errors[1] < 0.75 * errors[0] and errors[2] < 0.75 * errors[1], errors
    assert errors[2] < 0.1, errors  # worst seen: 0.06


def quadratic(phi_q, phi_k, v, keep):
    """``A = φ(q) φ(k)ᵀ`` masked by keep (B, Tq, Tk), ``out = A v / A 1`` (0 without keys)."""
    group = phi_q.shape[2] // phi_k.shape[2]
    out = torch.zeros(*phi_q.shape[:3], v.shape[-1])
    for head in range(phi_q.shape[2]):
        kv = head // group
        a = torch.einsum("bqm,bkm->bqk", phi_q[:, :, head], phi_k[:, :, kv]) * keep
        total = a.sum(-1, keepdim=True)
        rows = (a @ v[:, :, kv]) / torch.where(total > 0, total, 1.0)
        out[:, :, head] = torch.where(total > 0, rows, 0.0)
    return out


@pytest.mark.parametrize("chunk", [3, 64])
@pytest.mark.parametrize("shape", [(16, 16), (5, 16), (1, 16)], ids=["square", "cache", "step"])
def test_causal_equals_the_quadratic_form_of_its_features(shape, chunk, gen):
    q_len, k_len = shape
    q, k, v = qkv(gen, t=k_len, q_len=q_len)
    pad = torch.ones(2, k_len, dtype=torch.bool)
    pad[1, :3] = False
    mask = CausalMask(q_len, k_len, key_padding=pad)
    kernel = PerformerKernel(32, seed=3, chunk=chunk).eval()
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = kernel(*leaves, mask, scale=SCALE)
    out.square().sum().backward()

    w = kernel.projection
    assert w.shape == (32, D)
    ref_leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    rq, rk, rv = ref_leaves
    phi_q = favor_features(rq * SCALE**0.5, w, is_query=True)
    phi_k = favor_features(rk * SCALE**0.5, w, is_query=False)
    keep = mask.keep("cpu")[:, 0]  # causal and padding, (B, Tq, Tk)
    want = quadratic(phi_q, phi_k, rv, keep)
    want.square().sum().backward()
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    for a, b in zip(leaves, ref_leaves, strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-5)


def test_features_estimate_the_softmax_kernel(gen):
    """Mean of φ(x)·φ(y) over many orthogonal features is exp(x·y) (Lemma 1), up to a constant
    per query: ratios between keys are what softmax needs."""
    x = 0.3 * torch.randn(1, D, generator=gen)
    y = 0.3 * torch.randn(3, D, generator=gen)
    w = orthogonal_gaussian(2**18, D, generator=gen)
    estimate = favor_features(x, w, is_query=True) @ favor_features(y, w, is_query=False).T
    exact = torch.exp(x @ y.T)
    # worst relative error seen over 30 seeds: 0.008
    torch.testing.assert_close(estimate / estimate.sum(), exact / exact.sum(), rtol=0.02, atol=0)


def test_orthogonal_blocks(gen):
    w = orthogonal_gaussian(20, D, generator=gen)
    assert w.shape == (20, D)
    unit = w / w.norm(dim=1, keepdim=True)
    for start in (0, 8):  # full blocks are orthogonal
        block = unit[start : start + D]
        torch.testing.assert_close(block @ block.T, torch.eye(D), atol=1e-5, rtol=0)


def test_redraw_in_training_fixed_in_eval_and_seeded(gen):
    q, k, v = qkv(gen)
    mask = CausalMask(16, 16)
    kernel = PerformerKernel(16, seed=5)  # an nn.Module: training by default
    first = kernel(q, k, v, mask, scale=SCALE)
    second = kernel(q, k, v, mask, scale=SCALE)
    assert not torch.allclose(first, second)  # a new draw each training forward
    kernel.eval()
    torch.testing.assert_close(kernel(q, k, v, mask, scale=SCALE), second)  # the last draw stays
    fixed = PerformerKernel(16, seed=5, redraw=False)
    again = PerformerKernel(16, seed=5, redraw=False)
    out = fixed(q, k, v, mask, scale=SCALE)
    torch.testing.assert_close(fixed(q, k, v, mask, scale=SCALE), out)  # fixed in training
    torch.testing.assert_close(again(q, k, v, mask, scale=SCALE), out)  # same seed, same draw
    torch.testing.assert_close(PerformerKernel(16, seed=5)(q, k, v, mask, scale=SCALE), first)
    assert not torch.allclose(PerformerKernel(16, seed=6, redraw=False)(q, k, v, mask, scale=SCALE),
                              out)


def test_padded_keys_do_not_matter_and_empty_rows_are_zero(gen):
    q, k, v = qkv(gen, t=9)
    pad = torch.ones(2, 9, dtype=torch.bool)
    pad[0] = False
    pad[1, 2] = False
    mask = FullMask(9, 9, key_padding=pad)
    kernel = PerformerKernel(32).eval()
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = kernel(*leaves, mask, scale=SCALE)
    out.sum().backward()
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert all(torch.isfinite(t.grad).all() for t in leaves)
    k2, v2 = k.clone(), v.clone()
    k2[1, 2], v2[1, 2] = 50.0, -50.0
    torch.testing.assert_close(kernel(q, k2, v2, mask, scale=SCALE), out.detach())


def test_refuses_a_sliding_window():
    q = torch.randn(1, 4, H, D)
    reasons = PerformerKernel(8).why_not(AttentionCall.of(q, q, CausalMask(4, 4, window=2)))
    assert reasons and "sliding window (window=2) is not supported" in reasons[0]


@pytest.mark.parametrize("kernel", [PerformerKernel(16, seed=2).eval(), LinearKernel(chunk=4)],
                         ids=["performer", "linear"])
def test_causal_output_never_depends_on_later_keys(kernel, gen):
    """Strictly causal: no stabilizer or normaliser mixes in keys after the query."""
    q, k, v = qkv(gen, t=13)
    mask = CausalMask(13, 13)
    for p in (0, 5, 12):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        kernel(*leaves, mask, scale=SCALE)[:, p].square().sum().backward()
        for t in leaves[1:]:
            assert torch.equal(t.grad[:, p + 1 :], torch.zeros_like(t.grad[:, p + 1 :]))
        assert leaves[2].grad[:, p].abs().sum() > 0
        assert p == 0 or leaves[1].grad[:, :p].abs().sum() > 0  # one key alone: no k gradient
