"""``linear`` against the quadratic form of the same formula, written here.

Reference: ``A = φ(q) φ(k)ᵀ`` with ``φ(x) = elu(x) + 1``, zero where the mask forbids a
pair (causal, key padding); ``out = A v / A 1``; rows with no allowed key are 0.
Shapes: B batch, Tq/Tk, H = 4 query heads, Hkv kv heads, D = 8.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from txblocks import KernelUnavailableError
from txblocks.attention import AttentionCall, BlockDiagonalMask, CausalMask, FullMask, PrefixLMMask
from txblocks_linear import LinearKernel

H, D = 4, 8
#: (Tq, Tk, q_offset): self-attention, KV-cache chunk, one decoding step, queries at 0.
SHAPES = {"square": (13, 13, None), "cache": (5, 13, None), "step": (1, 13, None),
          "top_left": (6, 13, 0)}


def quadratic(phi_q, phi_k, v, *, causal, q_offset, pad):
    """The quadratic form, one batch row and head at a time."""
    b, tq, h, _ = phi_q.shape
    group = h // phi_k.shape[2]
    out = torch.zeros(b, tq, h, v.shape[-1])
    allowed = torch.ones(tq, phi_k.shape[1], dtype=torch.bool)
    if causal:
        allowed = torch.arange(phi_k.shape[1])[None, :] <= q_offset + torch.arange(tq)[:, None]
    for i in range(b):
        keep = allowed if pad is None else allowed & pad[i][None, :]
        for head in range(h):
            kv = head // group
            a = (phi_q[i, :, head] @ phi_k[i, :, kv].T) * keep
            total = a.sum(-1, keepdim=True)
            rows = (a @ v[i, :, kv]) / torch.where(total > 0, total, 1.0)
            out[i, :, head] = torch.where(total > 0, rows, 0.0)
    return out


def padding_of(kind, batch, k_len):
    if kind == "none":
        return None
    pad = torch.ones(batch, k_len, dtype=torch.bool)
    pad[0, :4] = False
    pad[-1, -4:] = False
    if kind == "empty":
        pad[0] = False  # a row with no key at all
    return pad


def run(fn, q, k, v, cotangent):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = fn(*leaves)
    (out * cotangent).sum().backward()
    return out.detach(), [t.grad for t in leaves]


@pytest.mark.parametrize("chunk", [4, 64])
@pytest.mark.parametrize("padding", ["none", "padded", "empty"])
@pytest.mark.parametrize("n_kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_linear_matches_the_quadratic_form(causal, shape, n_kv_heads, padding, chunk, gen):
    batch = 2
    q_len, k_len, q_offset = SHAPES[shape]
    pad = padding_of(padding, batch, k_len)
    mask_cls = CausalMask if causal else FullMask
    mask = mask_cls(q_len, k_len, q_offset=q_offset, key_padding=pad)
    q = torch.randn(batch, q_len, H, D, generator=gen)
    k = torch.randn(batch, k_len, n_kv_heads, D, generator=gen)
    v = torch.randn(batch, k_len, n_kv_heads, D, generator=gen)
    cot = torch.randn(batch, q_len, H, D, generator=gen)
    kernel = LinearKernel(chunk)

    out, grads = run(lambda q, k, v: kernel(q, k, v, mask, scale=0.3), q, k, v, cot)
    want, want_grads = run(
        lambda q, k, v: quadratic(F.elu(q) + 1, F.elu(k) + 1, v, causal=causal,
                                  q_offset=mask.q_offset, pad=pad), q, k, v, cot)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    for got, expected in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    if padding == "empty":
        assert torch.equal(out[0], torch.zeros_like(out[0]))
        assert all(torch.isfinite(g).all() for g in grads)


def test_padded_keys_do_not_matter(gen):
    pad = torch.ones(1, 9, dtype=torch.bool)
    pad[0, 2] = False
    mask = CausalMask(9, 9, key_padding=pad)
    q, k, v = (torch.randn(1, 9, 2, D, generator=gen) for _ in range(3))
    out = LinearKernel()(q, k, v, mask, scale=1.0)
    k2, v2 = k.clone(), v.clone()
    k2[0, 2], v2[0, 2] = 100.0, -100.0
    torch.testing.assert_close(LinearKernel()(q, k2, v2, mask, scale=1.0), out)


@pytest.mark.parametrize(("mask", "kwargs", "reason"), [
    (CausalMask(4, 4, window=2), {}, r"sliding window \(window=2\) is not supported"),
    (PrefixLMMask(4, 4, prefix_lengths=2), {}, r"mask PrefixLMMask is not supported: only "
                                               r"unmasked \('none'\) and causal"),
    (BlockDiagonalMask(4, 4, seq_lens=[[2, 2]]), {}, r"mask BlockDiagonalMask is not supported"),
    (FullMask(4, 4, bias=torch.zeros(1, H, 4, 4)), {}, r"an additive attention bias \(ALiBi"),
    (FullMask(4, 4), {"softcap": 5.0}, r"softcap needs the scores"),
    (FullMask(4, 4), {"dropout": 0.1}, r"dropout=0.1 on attention weights is not supported"),
])
def test_unsupported_calls_are_refused_with_a_reason(mask, kwargs, reason):
    q = torch.randn(1, 4, H, D)
    kernel = LinearKernel()
    reasons = kernel.why_not(AttentionCall.of(q, q, mask, **kwargs))
    assert len(reasons) == 1
    with pytest.raises(KernelUnavailableError, match=rf"'linear' cannot run this call: {reason}"):
        kernel(q, q, q, mask, scale=1.0, **kwargs)


def test_chunked_prefix_sums_scale_linearly_in_memory(gen):
    """T = 8192 runs with a state per chunk, never a T×T or T×M×D tensor."""
    q = torch.randn(1, 8192, 2, 16, generator=gen)
    out = LinearKernel(64)(q, q, q, CausalMask(8192, 8192), scale=1.0)
    assert out.shape == q.shape and torch.isfinite(out).all()
