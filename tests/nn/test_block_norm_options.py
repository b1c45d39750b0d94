"""Issue 16's block and head options against their formulas, written out here from the
modules they combine:

* ``post_attention_norm`` / ``post_ffn_norm`` (Gemma 2's sandwich):
  ``h = x + pa(attn(n1(x)))``, ``y = h + pf(ffn(n2(h)))``;
* ``layout: reordered_norm`` (OLMo 2): ``h = x + n1(attn(x))``, ``y = h + n2(ffn(h))``;
* ``layout: parallel`` with ``shared_norm`` (GPT-J, Phi, Falcon-7B):
  ``y = x + attn(n(x)) + ffn(n(x))``;
* ``attention.qk_norm_over: width`` (OLMo 2): q and k normed over all heads at once;
* ``head.final_softcap`` (Gemma 2): ``logits = c · tanh(z / c)``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import txblocks
from txblocks.attention.eager import EagerKernel
from txblocks.attention.strategies import CausalStrategy
from txblocks.nn.attention import Attention
from txblocks.nn.block import TransformerBlock
from txblocks.nn.ffn import MLP
from txblocks.nn.heads import LMHead
from txblocks.nn.width_norm import WidthNorm

TOL = dict(atol=1e-6, rtol=1e-6)


def _norm(gen: torch.Generator) -> nn.LayerNorm:
    norm = nn.LayerNorm(16)
    with torch.no_grad():  # not the identity: each norm's own weights matter
        norm.weight.copy_(torch.randn(16, generator=gen))
        norm.bias.copy_(torch.randn(16, generator=gen))
    return norm


def _parts(gen: torch.Generator):
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    return Attention(16, 4, 2, 4, EagerKernel()), MLP(16, 32, nn.GELU())


def test_sandwich_norms(gen):
    attn, ffn = _parts(gen)
    n1, n2, pa, pf = (_norm(gen) for _ in range(4))
    block = TransformerBlock(attn, ffn, n1, n2, post_attention_norm=pa, post_ffn_norm=pf)
    x = torch.randn(2, 6, 16, generator=gen)
    mask = CausalStrategy()(6, 6)
    h = x + pa(attn(n1(x), mask))
    expected = h + pf(ffn(n2(h)))
    torch.testing.assert_close(block(x, mask)[0], expected, **TOL)


def test_one_post_norm_alone(gen):
    attn, ffn = _parts(gen)
    n1, n2, pf = (_norm(gen) for _ in range(3))
    block = TransformerBlock(attn, ffn, n1, n2, post_ffn_norm=pf)
    x = torch.randn(2, 6, 16, generator=gen)
    mask = CausalStrategy()(6, 6)
    h = x + attn(n1(x), mask)
    torch.testing.assert_close(block(x, mask)[0], h + pf(ffn(n2(h))), **TOL)


def test_reordered_norm(gen):
    attn, ffn = _parts(gen)
    n1, n2 = _norm(gen), _norm(gen)
    block = TransformerBlock(attn, ffn, n1, n2, layout="reordered_norm")
    x = torch.randn(2, 6, 16, generator=gen)
    mask = CausalStrategy()(6, 6)
    h = x + n1(attn(x, mask))
    torch.testing.assert_close(block(x, mask)[0], h + n2(ffn(h)), **TOL)


def test_parallel_with_one_shared_norm(gen):
    attn, ffn = _parts(gen)
    n = _norm(gen)
    block = TransformerBlock(attn, ffn, n, None, layout="parallel")
    x = torch.randn(2, 6, 16, generator=gen)
    mask = CausalStrategy()(6, 6)
    torch.testing.assert_close(block(x, mask)[0], x + attn(n(x), mask) + ffn(n(x)), **TOL)
    assert [name for name, _ in block.named_children()].count("norm2") == 0


def test_block_refuses_what_it_cannot_run():
    attn = Attention(16, 4, 4, 4, EagerKernel())
    with pytest.raises(ValueError, match="only the parallel layout has"):
        TransformerBlock(attn, nn.Identity(), nn.Identity(), None, layout="pre_norm")
    with pytest.raises(ValueError, match="reordered_norm layout norms each branch output"):
        TransformerBlock(attn, nn.Identity(), nn.Identity(), nn.Identity(),
                         layout="reordered_norm", post_ffn_norm=nn.Identity())


def test_width_norm_is_a_norm_over_all_heads(gen):
    norm = nn.RMSNorm(12, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(12, generator=gen))
    x = torch.randn(2, 5, 3, 4, generator=gen)  # (B, T, H, D)
    flat = x.reshape(2, 5, 12)
    rms = flat / torch.sqrt(flat.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(WidthNorm(norm)(x), rms.reshape(2, 5, 3, 4), **TOL)


def test_qk_norm_over_width_in_a_built_model(gen):
    """q normed over n_heads·head_dim, k over n_kv_heads·head_dim, before the rotation."""
    spec = {"arch": "decoder", "vocab_size": 40, "d_model": 24, "n_layers": 1, "n_heads": 6,
            "n_kv_heads": 2, "position": "none",
            "block": {"norm": "rmsnorm", "attention": {"qk_norm": "rmsnorm",
                                                       "qk_norm_over": "width"}}}
    attention = txblocks.build(spec).blocks[0].attention
    assert attention.q_norm.norm.weight.shape == (24,) and attention.k_norm.norm.weight.shape == (8,)
    with torch.no_grad():
        attention.q_norm.norm.weight.copy_(torch.randn(24, generator=gen))
        attention.k_norm.norm.weight.copy_(torch.randn(8, generator=gen))
    x = torch.randn(2, 5, 24, generator=gen)
    mask = CausalStrategy()(5, 5)
    q, k, v = attention.qkv(x).split([24, 8, 8], dim=-1)
    q, k = attention.q_norm.norm(q), attention.k_norm.norm(k)
    q, k, v = (t.unflatten(-1, (-1, 4)).transpose(1, 2) for t in (q, k, v))
    k, v = k.repeat_interleave(3, dim=1), v.repeat_interleave(3, dim=1)
    scores = (q @ k.transpose(-1, -2)) / 2 + torch.full((5, 5), float("-inf")).triu(1)
    o = (scores.softmax(-1) @ v).transpose(1, 2).flatten(2)
    torch.testing.assert_close(attention(x, mask), attention.out(o), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cap", [0.5, 3.0])
def test_final_softcap(gen, cap):
    head = LMHead(8, 11, final_softcap=cap)
    h = torch.randn(2, 3, 8, generator=gen) * 4
    z = head.proj(h)
    torch.testing.assert_close(head(h), cap * torch.tanh(z / cap), **TOL)
    assert head(h).abs().max() <= cap


def test_spec_fields_reach_the_modules():
    spec = {"arch": "decoder", "vocab_size": 40, "d_model": 16, "n_layers": 2, "n_heads": 4,
            "block": {"norm": "rmsnorm", "post_attention_norm": True, "post_ffn_norm": True},
            "layers": [{"select": 1, "layout": "parallel", "shared_norm": True,
                        "post_ffn_norm": False}],
            "head": {"type": "lm", "final_softcap": 30.0}}  # fmt: skip
    model = txblocks.build(spec)
    first, second = model.blocks
    assert first.post_attention_norm is not None and first.post_ffn_norm is not None
    assert second.layout == "parallel" and second.norm2 is None and second.post_ffn_norm is None
    assert model.head.final_softcap == 30.0
