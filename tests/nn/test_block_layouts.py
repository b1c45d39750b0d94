"""The three block layouts against their definitions, composed by hand from the same modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from txblocks.attention.eager import EagerKernel
from txblocks.attention.strategies import CausalStrategy
from txblocks.nn.attention import Attention
from txblocks.nn.block import TransformerBlock
from txblocks.nn.ffn import MLP


class _AuxFFN(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x), x.square().mean()


def _parts(gen):
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    attn = Attention(16, 4, 2, 4, EagerKernel())
    ffn = MLP(16, 32, nn.GELU())
    return attn, ffn, nn.LayerNorm(16), nn.LayerNorm(16)


@pytest.mark.parametrize("layout", ["pre_norm", "post_norm", "parallel"])
def test_layout_definition(gen, layout):
    attn, ffn, n1, n2 = _parts(gen)
    block = TransformerBlock(attn, ffn, n1, n2, layout=layout)
    x = torch.randn(2, 6, 16, generator=gen)
    mask = CausalStrategy()(6, 6)
    a = lambda h: attn(h, mask)  # noqa: E731
    if layout == "pre_norm":
        h = x + a(n1(x))
        expected = h + ffn(n2(h))
    elif layout == "post_norm":
        h = n1(x + a(x))
        expected = n2(h + ffn(h))
    else:
        expected = x + a(n1(x)) + ffn(n2(x))
    out, aux = block(x, mask)
    assert aux is None
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)


def test_block_passes_on_ffn_aux_loss(gen):
    attn, ffn, n1, n2 = _parts(gen)
    block = TransformerBlock(attn, _AuxFFN(ffn), n1, n2)
    x = torch.randn(2, 6, 16, generator=gen)
    _, aux = block(x, CausalStrategy()(6, 6))
    assert aux is not None and aux.item() > 0


def test_unknown_layout_is_rejected():
    attn = Attention(16, 4, 4, 4, EagerKernel())
    with pytest.raises(ValueError, match="allowed: pre_norm, post_norm, parallel"):
        TransformerBlock(attn, nn.Identity(), nn.Identity(), nn.Identity(), layout="sandwich")
