"""audio_conv (Whisper's front end) against plain math, and its place in a seq2seq model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import txblocks
from txblocks.errors import BuildError

SPEC = {"arch": "seq2seq", "vocab_size": 30, "d_model": 16, "n_layers": 1, "n_heads": 2,
        "max_seq_len": 6, "decoder_max_seq_len": 9, "front_end": {"type": "audio_conv", "mels": 4},
        "block": {"attention": {"fused_qkv": False, "k_bias": False}}}


def _model(registry, spec=SPEC):
    torch.manual_seed(0)
    return txblocks.build(txblocks.load_spec(spec, registry=registry)).eval()


def test_two_convolutions_with_gelu_halve_the_frames(registry, gen):
    conv = _model(registry).front_end
    x = torch.randn(2, 4, 12, generator=gen)
    w1, b1, w2, b2 = conv.conv1.weight, conv.conv1.bias, conv.conv2.weight, conv.conv2.bias
    padded = F.pad(x, (1, 1))
    h = torch.stack([torch.einsum("bmk,dmk->bd", padded[:, :, t:t + 3], w1) for t in range(12)], -1)
    h = F.gelu(h + b1[:, None])
    hp = F.pad(h, (1, 1))
    y = torch.stack([torch.einsum("bmk,dmk->bd", hp[:, :, t:t + 3], w2) for t in range(0, 12, 2)], -1)
    expected = F.gelu(y + b2[:, None]).transpose(1, 2)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), expected, atol=1e-5, rtol=1e-5)


def test_the_encoder_adds_its_positions_to_the_convolutions(registry, gen):
    model = _model(registry)
    assert model.encoder.embeddings is None and model.decoder.embeddings is not None
    assert model.decoder.position.embedding.num_embeddings == 9
    x = torch.randn(2, 4, 12, generator=gen)
    with torch.no_grad():
        a = model.encode(input_features=x)
        b = model.encode(inputs_embeds=model.front_end(x))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    k = model.encoder.blocks[0].attention.k
    assert k.bias is None and model.encoder.blocks[0].attention.q.bias is not None


def test_generate_from_features_equals_generate_from_their_embeddings(registry, gen):
    model = _model(registry)
    x = torch.randn(2, 4, 12, generator=gen)
    a = model.generate(input_features=x, max_new_tokens=5, decoder_start_token_id=3)
    b = model.generate(inputs_embeds=model.front_end(x), max_new_tokens=5, decoder_start_token_id=3)
    assert a.shape == (2, 6) and torch.equal(a, b) and (a[:, 0] == 3).all()


def test_audio_conv_outside_seq2seq_and_fused_k_bias_are_build_errors(registry):
    with pytest.raises(BuildError, match="audio_conv feeds the encoder"):
        _model(registry, {"arch": "encoder", "vocab_size": 30, "d_model": 16, "n_layers": 1,
                          "n_heads": 2, "front_end": "audio_conv"})
    with pytest.raises(BuildError, match="k_bias"):
        _model(registry, {**SPEC, "block": {"attention": {"k_bias": False}}})
