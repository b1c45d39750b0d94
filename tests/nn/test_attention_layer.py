"""The attention layer (projections, GQA, QK-norm, soft-capping) against plain math."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from txblocks.attention.eager import EagerKernel
from txblocks.attention.sdpa import SDPAKernel
from txblocks.attention.strategies import CausalStrategy, FullStrategy
from txblocks.nn.attention import Attention
from txblocks.nn.norms import RMSNorm


def _reference(x, wq, wk, wv, wo, n_heads, n_kv, causal, softcap=None, qn=None, kn=None):
    """Loops over heads; key/value head of query head h is h // (n_heads // n_kv)."""
    b, t, _ = x.shape
    d = wq.shape[0] // n_heads
    q = (x @ wq.T).view(b, t, n_heads, d)
    k = (x @ wk.T).view(b, t, n_kv, d)
    v = (x @ wv.T).view(b, t, n_kv, d)
    if qn is not None:
        q, k = qn(q), kn(k)
    outs = []
    for h in range(n_heads):
        g = h // (n_heads // n_kv)
        s = q[:, :, h] @ k[:, :, g].transpose(1, 2) / math.sqrt(d)
        if softcap is not None:
            s = softcap * torch.tanh(s / softcap)
        if causal:
            s = s.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
        outs.append(torch.softmax(s, -1) @ v[:, :, g])
    return torch.cat(outs, dim=-1) @ wo.T


@pytest.mark.parametrize("n_kv", [4, 2, 1])
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("kernel", [EagerKernel(), SDPAKernel()], ids=["eager", "sdpa"])
def test_attention_matches_per_head_math(gen, n_kv, fused, kernel):
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    layer = Attention(24, 4, n_kv, 6, kernel, qkv_bias=False, out_bias=False, fused_qkv=fused)
    if fused:
        wq, wk, wv = layer.qkv.weight.split(list(layer.sizes))
    else:
        wq, wk, wv = layer.q.weight, layer.k.weight, layer.v.weight
    x = torch.randn(2, 7, 24, generator=gen)
    out = layer(x, CausalStrategy()(7, 7))
    expected = _reference(x, wq, wk, wv, layer.out.weight, 4, n_kv, causal=True)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_qk_norm_and_softcap(gen):
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    qn, kn = RMSNorm(6), RMSNorm(6)
    with torch.no_grad():
        qn.weight.uniform_(0.5, 2.0)
        kn.weight.uniform_(0.5, 2.0)
    layer = Attention(24, 4, 2, 6, EagerKernel(), qkv_bias=False, out_bias=False,
                      q_norm=qn, k_norm=kn, softcap=0.5)
    wq, wk, wv = layer.qkv.weight.split(list(layer.sizes))
    x = torch.randn(2, 5, 24, generator=gen) * 4
    out = layer(x, FullStrategy()(5, 5))
    expected = _reference(x, wq, wk, wv, layer.out.weight, 4, 2, causal=False, softcap=0.5, qn=qn, kn=kn)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_heads_must_divide():
    with pytest.raises(ValueError, match="not a multiple"):
        Attention(24, 4, 3, 6, EagerKernel())


def test_custom_scale_is_used(gen):
    layer = Attention(8, 2, 2, 4, EagerKernel(), scale=1.0)
    ref = Attention(8, 2, 2, 4, EagerKernel())
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(1, 4, 8, generator=gen) * 3
    mask = FullStrategy()(4, 4)
    assert not torch.allclose(layer(x, mask), ref(x, mask))
    ref.scale = 1.0
    torch.testing.assert_close(layer(x, mask), ref(x, mask))
    assert isinstance(layer.out, nn.Linear)
