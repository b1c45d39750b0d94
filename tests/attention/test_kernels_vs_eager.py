"""Every attention kernel runnable here against eager, and eager against naive loops.

Parametrized over the registry's kernels and mask strategies, with key padding,
GQA, KV-cache offsets and an additive bias. Shapes: B, Tq, Tk, H, Hkv, D.
"""

from __future__ import annotations

import functools

import pytest
import torch

from txblocks.attention.eager import EagerKernel
from txblocks.plugins import load_registry

CPU = torch.device("cpu")
H, D = 4, 8
SCALE = 0.3  # not the default D ** -0.5, so that a kernel ignoring it fails


@functools.cache
def kernel_names(exclude: tuple[str, ...] = ()) -> list[str]:
    """Registered kernels that can run on CPU (xformers is tested in test_xformers_glue)."""
    names = load_registry(autoload=False).names("attention")
    return [n for n in names if n not in exclude and not build_kernel(n).why_not_on(CPU)]


def build_kernel(name: str):
    entry = load_registry(autoload=False).get("attention", name)
    return entry.factory(entry.config())


def inputs(built, n_kv_heads: int, gen: torch.Generator, bias: bool):
    """Fresh random q (B, Tq, H, D), k, v (B, Tk, Hkv, D), bias (1, H, Tq, Tk), cotangent."""
    b, tq, tk = built.batch, built.q_len, built.k_len
    q = torch.randn(b, tq, H, D, generator=gen)
    k = torch.randn(b, tk, n_kv_heads, D, generator=gen)
    v = torch.randn(b, tk, n_kv_heads, D, generator=gen)
    bias_t = torch.randn(1, H, tq, tk, generator=gen) if bias else None
    cotangent = torch.randn(b, tq, H, D, generator=gen)
    return q, k, v, bias_t, cotangent


def run(kernel, q, k, v, mask, bias, cotangent, **kwargs):
    """Output and gradients w.r.t. q, k, v (and bias) of ``kernel``."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    bias_leaf = None if bias is None else bias.detach().clone().requires_grad_()
    call_mask = mask.with_bias(bias_leaf)
    out = kernel(*leaves, call_mask, scale=SCALE, **kwargs)
    (out * cotangent).sum().backward()
    grads = [t.grad for t in leaves] + ([] if bias_leaf is None else [bias_leaf.grad])
    return out.detach(), grads


def naive(q, k, v, keep, bias, scale, softcap=None):
    """Attention from the definition, one batch row and head at a time (keep: (B, Tq, Tk))."""
    b, tq, h, _ = q.shape
    group = h // k.shape[2]
    out = torch.zeros_like(q)
    for i in range(b):
        for head in range(h):
            kv = head // group  # query head h shares kv head h // (H / Hkv)
            scores = q[i, :, head] @ k[i, :, kv].T * scale
            if softcap is not None:
                scores = softcap * torch.tanh(scores / softcap)
            if bias is not None:
                scores = scores + bias[0, head]
            for row in range(tq):
                allowed = keep[i, row]
                if allowed.any():
                    weights = torch.softmax(scores[row][allowed], dim=-1)
                    out[i, row, head] = weights @ v[i, :, kv][allowed]
    return out


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("shape", ["square", "cache", "top_left", "step"])
@pytest.mark.parametrize("n_kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("padding", ["none", "right", "left"])
@pytest.mark.parametrize("kernel_name", kernel_names(exclude=("eager",)))  # eager: see below
def test_kernel_matches_eager(
    kernel_name, mask_case, padding, n_kv_heads, shape, bias, make_mask, gen
):
    kernel = build_kernel(kernel_name)
    built = make_mask(mask_case, shape=shape, padding=padding)
    q, k, v, bias_t, cotangent = inputs(built, n_kv_heads, gen, bias)
    out, grads = run(kernel, q, k, v, built.mask, bias_t, cotangent)
    want, want_grads = run(EagerKernel(), q, k, v, built.mask, bias_t, cotangent)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    for got, expected in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("softcap", [None, 2.0])
@pytest.mark.parametrize("n_kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("padding", ["none", "left"])
def test_eager_matches_definition(
    mask_case, padding, n_kv_heads, softcap, make_mask, brute_keep, gen
):
    built = make_mask(mask_case, shape="cache", padding=padding)
    q, k, v, bias, _ = inputs(built, n_kv_heads, gen, bias=True)
    keep = brute_keep(mask_case, built)
    out = EagerKernel()(q, k, v, built.mask.with_bias(bias), scale=SCALE, softcap=softcap)
    want = naive(q, k, v, keep, bias, SCALE, softcap)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kernel_name", kernel_names())
def test_rows_without_keys_are_zero_and_finite(kernel_name, mask_case, make_mask, brute_keep, gen):
    kernel = build_kernel(kernel_name)
    k_len = 6
    padding = torch.ones(3, k_len, dtype=torch.bool)
    padding[0] = False  # a row padded everywhere
    padding[1, :3] = False  # left padding: with a causal mask the first queries see nothing
    built = make_mask(mask_case, batch=3, shape="square", key_padding=padding)
    q, k, v, bias, cotangent = inputs(built, 2, gen, bias=True)
    out, grads = run(kernel, q, k, v, built.mask, bias, cotangent)
    empty = ~brute_keep(mask_case, built).any(-1)  # (B, Tq)
    assert empty[0].all()
    assert torch.isfinite(out).all()
    assert (out[empty] == 0).all()
    assert (out[~empty].abs().sum(-1) > 0).all()
    for grad in grads:
        assert torch.isfinite(grad).all()
    assert (grads[0][empty] == 0).all()  # no gradient reaches queries that see nothing
    assert (grads[1][0] == 0).all() and (grads[2][0] == 0).all()


@pytest.mark.parametrize("kernel_name", kernel_names())
def test_softcap(kernel_name, gen):
    kernel = build_kernel(kernel_name)
    causal = load_registry(autoload=False).get("mask", "causal")
    mask = causal.factory(causal.config())(5, 5)
    q, k, v = (torch.randn(2, 5, H, D, generator=gen) * 4 for _ in range(3))
    reasons = kernel.why_not(_call(q, k, mask, softcap=1.5))
    if reasons:
        assert any("softcap" in r for r in reasons)
        return
    out = kernel(q, k, v, mask, scale=SCALE, softcap=1.5)
    torch.testing.assert_close(out, EagerKernel()(q, k, v, mask, scale=SCALE, softcap=1.5))
    assert not torch.allclose(out, EagerKernel()(q, k, v, mask, scale=SCALE))


@pytest.mark.parametrize("kernel_name", ["eager", "sdpa"])
def test_dropout(kernel_name, gen):
    kernel = build_kernel(kernel_name)
    full = load_registry(autoload=False).get("mask", "none")
    samples = 4000
    mask = full.factory(full.config())(4, 6)
    q = torch.randn(1, 4, H, D, generator=gen)
    k, v = (torch.randn(1, 6, 2, D, generator=gen) for _ in range(2))
    assert kernel.why_not(_call(q, k, mask, dropout=0.3)) == []
    plain = kernel(q, k, v, mask, scale=SCALE)
    torch.testing.assert_close(kernel(q, k, v, mask, scale=SCALE, dropout=0.0), plain)
    with torch.random.fork_rng():
        torch.manual_seed(int(torch.randint(2**31, (1,), generator=gen)))
        many = [t.expand(samples, -1, -1, -1) for t in (q, k, v)]
        dropped = kernel(*many, mask, scale=SCALE, dropout=0.3)
    assert not torch.allclose(dropped[0], plain[0])
    assert (dropped.var(0) > 0).all()
    # inverted dropout keeps the expected value; the sample mean's std is about 0.005 here
    torch.testing.assert_close(dropped.mean(0), plain[0], atol=0.05, rtol=0)


def test_shape_errors(gen):
    causal = load_registry(autoload=False).get("mask", "causal")
    mask = causal.factory(causal.config())(5, 5)
    q = torch.randn(1, 5, 3, D, generator=gen)
    k = torch.randn(1, 5, 2, D, generator=gen)
    with pytest.raises(ValueError, match="not a multiple of Hkv=2"):
        EagerKernel()(q, k, k, mask, scale=1.0)
    with pytest.raises(ValueError, match="mask is for Tq=5, Tk=5"):
        EagerKernel()(q[:, :4], k[:, :, :1], k[:, :, :1], mask, scale=1.0)


def _call(q, k, mask, dropout=0.0, softcap=None):
    from txblocks.attention.kernel import AttentionCall

    return AttentionCall.of(q, k, mask, dropout, softcap)
