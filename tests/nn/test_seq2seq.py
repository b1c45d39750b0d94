"""Encoder–decoder models: cross-attention math, causality, encoder reuse, padding."""

from __future__ import annotations

import math

import pytest
import torch

import txblocks
from txblocks.attention.eager import EagerKernel
from txblocks.attention.sdpa import SDPAKernel
from txblocks.attention.strategies import FullStrategy
from txblocks.nn.attention import Attention


def _seq2seq(registry, **changes):
    spec = {
        "arch": "seq2seq", "vocab_size": 40, "d_model": 24, "n_layers": 2, "decoder_layers": 3,
        "n_heads": 4, "n_kv_heads": 2, "position": {"type": "relative_bias", "num_buckets": 8, "max_distance": 16},
        "block": {"norm": "rmsnorm", "attention": {"bias": False}, "ffn": {"type": "glu", "hidden": 40}},
        "head": {"type": "lm", "scale": "rsqrt_d_model"},
    }
    spec.update(changes)
    return txblocks.build(txblocks.load_spec(spec, registry=registry)).eval()


@pytest.mark.parametrize("kernel", [EagerKernel(), SDPAKernel()], ids=["eager", "sdpa"])
def test_cross_attention_matches_plain_math(gen, kernel):
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    layer = Attention(16, 4, 2, 4, kernel, fused_qkv=False)
    x = torch.randn(2, 5, 16, generator=gen)
    ctx = torch.randn(2, 7, 16, generator=gen)
    padding = torch.ones(2, 7, dtype=torch.bool)
    padding[1, 4:] = False
    out = layer(x, FullStrategy()(5, 7, key_padding=padding, q_offset=0), context=ctx)
    q = (x @ layer.q.weight.T + layer.q.bias).view(2, 5, 4, 4)
    k = (ctx @ layer.k.weight.T + layer.k.bias).view(2, 7, 2, 4)
    v = (ctx @ layer.v.weight.T + layer.v.bias).view(2, 7, 2, 4)
    heads = []
    for h in range(4):
        s = torch.einsum("bqd,bkd->bqk", q[:, :, h], k[:, :, h // 2]) / math.sqrt(4)
        s = s.masked_fill(~padding[:, None, :], float("-inf"))
        heads.append(torch.softmax(s, -1) @ v[:, :, h // 2])
    expected = torch.cat(heads, -1) @ layer.out.weight.T + layer.out.bias
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_fused_projection_refuses_cross_attention(gen):
    layer = Attention(16, 4, 4, 4, EagerKernel(), fused_qkv=True)
    with pytest.raises(ValueError, match="fused_qkv=False"):
        layer(torch.randn(1, 2, 16), FullStrategy()(2, 3, q_offset=0), context=torch.randn(1, 3, 16))


def test_encoder_output_reuse_and_decoder_causality(registry, gen):
    model = _seq2seq(registry)
    src = torch.randint(0, 40, (2, 6), generator=gen)
    tgt = torch.randint(0, 40, (2, 5), generator=gen)
    with torch.no_grad():
        full = model(src, decoder_input_ids=tgt)
        enc = model.encode(src)
        reused = model(decoder_input_ids=tgt, encoder_outputs=enc)
        changed = tgt.clone()
        changed[:, 3:] = (changed[:, 3:] + 1) % 40
        later = model(src, decoder_input_ids=changed)
    torch.testing.assert_close(reused.logits, full.logits)
    torch.testing.assert_close(full.encoder_last_hidden_state, enc)
    torch.testing.assert_close(later.logits[:, :3], full.logits[:, :3], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(later.logits[:, 3:], full.logits[:, 3:])


def test_source_padding_is_invisible_to_the_decoder(registry, gen):
    model = _seq2seq(registry)
    src = torch.randint(0, 40, (1, 6), generator=gen)
    padded = torch.cat([src, torch.randint(0, 40, (1, 3), generator=gen)], 1)
    mask = torch.tensor([[1] * 6 + [0] * 3])
    tgt = torch.randint(0, 40, (1, 4), generator=gen)
    with torch.no_grad():
        a = model(src, decoder_input_ids=tgt).logits
        b = model(padded, mask, decoder_input_ids=tgt).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_stacks_share_embeddings_and_have_own_positions(registry):
    model = _seq2seq(registry)
    assert model.encoder.embeddings.tokens is model.decoder.embeddings.tokens
    assert model.head.proj.weight is model.decoder.embeddings.tokens.weight
    assert model.encoder.position is not model.decoder.position
    assert len(model.encoder.blocks) == 2 and len(model.decoder.blocks) == 3
    assert all(b.cross_attention is not None for b in model.decoder.blocks)
    assert all(b.cross_attention is None for b in model.encoder.blocks)
    separate = _seq2seq(registry, shared_embeddings=False)
    assert separate.encoder.embeddings.tokens is not separate.decoder.embeddings.tokens


def test_overrides_pick_a_stack(registry):
    model = _seq2seq(registry, layers=[{"stack": "decoder", "select": 0, "ffn": {"type": "mlp", "hidden": 12}}])
    assert model.decoder.blocks[0].ffn.up.out_features == 12
    assert all(not hasattr(b.ffn, "up") for b in model.encoder.blocks)
    with pytest.raises(txblocks.SpecError, match=r"layers\[0\]\.select: layer index 2 .*in the encoder"):
        _seq2seq(registry, layers=[{"select": 2, "dropout": 0.1}])
    with pytest.raises(txblocks.SpecError, match=r"layers\[0\]\.stack: decoder models have no encoder stack"):
        txblocks.load_spec({"arch": "decoder", "vocab_size": 8, "d_model": 8, "n_layers": 1, "n_heads": 2,
                            "layers": [{"stack": "encoder", "select": 0}]}, registry=registry)


def test_t5_head_scale(registry, gen):
    model = _seq2seq(registry)
    hidden = torch.randn(1, 3, 24, generator=gen)
    torch.testing.assert_close(model.head(hidden), (hidden * 24**-0.5) @ model.head.proj.weight.T)


def test_seq2seq_backward_and_aux(registry, gen):
    model = _seq2seq(registry).train()
    src = torch.randint(0, 40, (2, 6), generator=gen)
    out = model(src, decoder_input_ids=src[:, :4])
    out.logits.logsumexp(-1).mean().backward()
    assert out.aux_loss is None
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
