"""Incremental decoding with the KV cache equals one full forward, for every position scheme."""

from __future__ import annotations

import pytest
import torch

import txblocks

POSITIONS = ["learned", "sinusoidal", "rope", "alibi", {"type": "relative_bias", "num_buckets": 8, "max_distance": 16},
             {"type": "rope", "fraction": 0.5, "scaling": {"type": "linear", "factor": 2.0}}]
MASKS = ["causal", {"type": "sliding_window", "window": 3}]


def _decoder(registry, position, mask, n_kv=2):
    spec = {"arch": "decoder", "vocab_size": 50, "max_seq_len": 64, "d_model": 32, "n_layers": 2,
            "n_heads": 4, "n_kv_heads": n_kv, "position": position,
            "block": {"attention": {"mask": mask}},
            "layers": [{"select": 1, "attention": {"mask": "causal"}}]}
    return txblocks.build(txblocks.load_spec(spec, registry=registry)).eval()


@pytest.mark.parametrize("mask", MASKS, ids=["causal", "window"])
@pytest.mark.parametrize("position", POSITIONS, ids=["learned", "sinusoidal", "rope", "alibi", "t5", "rope_partial"])
def test_incremental_equals_full_forward(registry, gen, position, mask):
    model = _decoder(registry, position, mask)
    ids = torch.randint(0, 50, (2, 10), generator=gen)
    attention = torch.ones_like(ids)
    attention[1, :3] = 0  # left padding
    positions = (attention.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        full = model(ids, attention, position_ids=positions).logits
        cache = model.new_cache(2, 10)
        chunks = [model(ids[:, :4], attention[:, :4], position_ids=positions[:, :4], cache=cache).logits]
        for t in range(4, 10):  # the mask of all tokens so far, as Hugging Face passes it
            out = model(ids[:, t:t + 1], attention[:, :t + 1], position_ids=positions[:, t:t + 1], cache=cache)
            chunks.append(out.logits)
    incremental = torch.cat(chunks, dim=1)
    torch.testing.assert_close(incremental[0], full[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(incremental[1, 3:], full[1, 3:], atol=1e-5, rtol=1e-5)
    assert out.cache is cache and cache.position == 10


def test_mask_of_new_tokens_only_is_accepted(registry, gen):
    model = _decoder(registry, "rope", "causal")
    ids = torch.randint(0, 50, (1, 6), generator=gen)
    with torch.no_grad():
        full = model(ids).logits
        cache = model.new_cache(1, 6)
        model(ids[:, :5], torch.ones(1, 5), cache=cache)
        last = model(ids[:, 5:], torch.ones(1, 1), cache=cache).logits
        with pytest.raises(ValueError, match="must cover 1 or 7"):
            model(ids[:, :1], torch.ones(1, 3), cache=cache)
    torch.testing.assert_close(last[:, -1], full[:, -1], atol=1e-5, rtol=1e-5)


def test_cache_keeps_kv_heads_and_window_only(registry, gen):
    model = _decoder(registry, "rope", {"type": "sliding_window", "window": 3}, n_kv=1)
    cache = model.new_cache(2, 40)
    assert cache.layers[0].k.shape == (2, 3, 1, 8)  # window layer: 3 positions, 1 kv head
    assert cache.layers[1].k.shape == (2, 40, 1, 8)  # global layer: all positions
    with torch.no_grad():
        model(torch.randint(0, 50, (2, 30), generator=gen), cache=cache)
    assert cache.layers[0].k.shape[1] == 3 and cache.layers[0].length == 3


def test_overflowing_a_full_cache_is_a_clear_error(registry, gen):
    model = _decoder(registry, "rope", "causal")
    cache = model.new_cache(1, 4)
    with pytest.raises(ValueError, match="holds 4 positions .* larger max_len"), torch.no_grad():
        model(torch.randint(0, 50, (1, 6), generator=gen), cache=cache)


def test_seq2seq_incremental_equals_full(registry, gen):
    spec = {"arch": "seq2seq", "vocab_size": 40, "d_model": 24, "n_layers": 2, "n_heads": 4,
            "position": {"type": "relative_bias", "num_buckets": 8, "max_distance": 16}, "block": {"norm": "rmsnorm"}}
    model = txblocks.build(txblocks.load_spec(spec, registry=registry)).eval()
    src = torch.randint(0, 40, (2, 7), generator=gen)
    src_mask = torch.ones_like(src)
    src_mask[0, 5:] = 0
    tgt = torch.randint(0, 40, (2, 6), generator=gen)
    with torch.no_grad():
        full = model(src, src_mask, decoder_input_ids=tgt).logits
        enc = model.encode(src, src_mask)
        cache = model.decoder.new_cache(2, 6)
        steps = [model(attention_mask=src_mask, decoder_input_ids=tgt[:, t:t + 1], encoder_outputs=enc,
                       cache=cache).logits for t in range(6)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
    assert all(c.k is not None for c in cache.cross)
