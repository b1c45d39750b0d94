"""Generation: greedy and beam search against references, sampling controls against their formulas."""

from __future__ import annotations

import itertools

import pytest
import torch

import txblocks
from txblocks.generation.config import GenerationConfig, process_logits, sample_filter


@pytest.fixture
def decoder(registry):
    torch.manual_seed(1234)
    spec = {"arch": "decoder", "vocab_size": 30, "max_seq_len": 64, "d_model": 32, "n_layers": 2,
            "n_heads": 4, "n_kv_heads": 2, "position": "rope", "init_std": 0.2}
    return txblocks.build(txblocks.load_spec(spec, registry=registry)).eval()


@pytest.fixture
def seq2seq(registry):
    torch.manual_seed(4321)
    spec = {"arch": "seq2seq", "vocab_size": 30, "d_model": 32, "n_layers": 2, "n_heads": 4,
            "position": "relative_bias", "init_std": 0.2}
    return txblocks.build(txblocks.load_spec(spec, registry=registry)).eval()


def _greedy_without_cache(model, ids, mask, steps):
    seq, mask = ids.clone(), mask.clone()
    for _ in range(steps):
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        logits = model(seq, mask, position_ids=positions).logits[:, -1]
        seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    return seq


def test_greedy_equals_a_loop_without_cache(decoder, gen):
    ids = torch.randint(0, 30, (3, 7), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    mask[2, :5] = 0
    with torch.no_grad():
        expected = _greedy_without_cache(decoder, ids, mask, 12)
    assert torch.equal(decoder.generate(ids, mask, max_new_tokens=12), expected)


def test_seq2seq_greedy_equals_a_loop_without_cache(seq2seq, gen):
    src = torch.randint(0, 30, (2, 6), generator=gen)
    mask = torch.ones_like(src)
    mask[0, 4:] = 0
    out = seq2seq.generate(src, mask, max_new_tokens=8, decoder_start_token_id=3)
    dec = torch.full((2, 1), 3)
    with torch.no_grad():
        for _ in range(8):
            logits = seq2seq(src, mask, decoder_input_ids=dec).logits[:, -1]
            dec = torch.cat([dec, logits.argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, dec)


def test_stream_yields_what_generate_returns(decoder, gen):
    ids = torch.randint(0, 30, (2, 5), generator=gen)
    streamed = torch.stack(list(decoder.stream(ids, max_new_tokens=6)), dim=1)
    assert torch.equal(torch.cat([ids, streamed], 1), decoder.generate(ids, max_new_tokens=6))


def test_eos_stops_and_pads(decoder, gen):
    ids = torch.randint(0, 30, (2, 5), generator=gen)
    free = decoder.generate(ids, max_new_tokens=10)
    first = free[0, 5].item()
    second = free[1, 7].item()
    out = decoder.generate(ids, max_new_tokens=10, eos_token_id=[first, second], pad_token_id=29)
    row0 = out[0, 5:].tolist()
    assert row0[0] == first and set(row0[1:]) <= {29}
    stop = next(i for i, t in enumerate(out[1, 5:].tolist()) if t in (first, second))
    assert set(out[1, 5 + stop + 1:].tolist()) <= {29}
    held = decoder.generate(ids, max_new_tokens=4, eos_token_id=first, min_new_tokens=4)
    assert first not in held[0, 5:].tolist()


def test_sampling_is_reproducible_and_top_k_one_is_greedy(decoder, gen):
    ids = torch.randint(0, 30, (2, 5), generator=gen)
    a = decoder.generate(ids, max_new_tokens=10, do_sample=True, seed=7)
    b = decoder.generate(ids, max_new_tokens=10, do_sample=True, seed=7)
    c = decoder.generate(ids, max_new_tokens=10, do_sample=True, seed=8, temperature=5.0)
    assert torch.equal(a, b) and not torch.equal(a, c)
    greedy = decoder.generate(ids, max_new_tokens=10)
    assert torch.equal(decoder.generate(ids, max_new_tokens=10, do_sample=True, top_k=1, seed=1), greedy)


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.05, 0.3, 0.15]])
    kept = sample_filter(probs.log(), GenerationConfig(top_p=0.75)).isfinite()
    assert kept.tolist() == [[True, False, True, False]]  # 0.5 + 0.3 ≥ 0.75
    kept = sample_filter(probs.log(), GenerationConfig(top_p=0.85)).isfinite()
    assert kept.tolist() == [[True, False, True, True]]
    kept = sample_filter(probs.log(), GenerationConfig(top_k=2, temperature=0.5)).isfinite()
    assert kept.tolist() == [[True, False, True, False]]


def test_repetition_penalty_formula():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    seen = torch.tensor([[0, 1]])
    out = process_logits(logits, seen, GenerationConfig(repetition_penalty=2.0), step=5)
    assert out.tolist() == [[1.0, -2.0, 0.5, 3.0]]


def _sequence_logprob(model, ids, continuation):
    seq = torch.cat([ids, continuation], 1)
    with torch.no_grad():
        logp = model(seq).logits.log_softmax(-1)
    picks = logp[:, ids.shape[1] - 1:-1].gather(-1, continuation[..., None])
    return picks.sum().item()


def test_wide_beam_finds_the_exhaustive_optimum(registry):
    torch.manual_seed(99)
    spec = {"arch": "decoder", "vocab_size": 5, "d_model": 16, "n_layers": 1, "n_heads": 2,
            "position": "rope", "init_std": 0.5}
    model = txblocks.build(txblocks.load_spec(spec, registry=registry)).eval()
    ids = torch.tensor([[1, 3]])
    best = max(
        itertools.product(range(5), repeat=3),
        key=lambda c: _sequence_logprob(model, ids, torch.tensor([c])),
    )
    out = model.generate(ids, max_new_tokens=3, num_beams=25, length_penalty=0.0)
    assert out[0, 2:].tolist() == list(best)
    one = model.generate(ids, max_new_tokens=3, num_beams=1)
    assert _sequence_logprob(model, ids, out[:, 2:]) >= _sequence_logprob(model, ids, one[:, 2:]) - 1e-6


def test_seq2seq_beam_search_runs_per_row(seq2seq, gen):
    src = torch.randint(0, 30, (2, 6), generator=gen)
    out = seq2seq.generate(src, max_new_tokens=5, num_beams=3, eos_token_id=2)
    assert out.shape[0] == 2 and out[:, 0].tolist() == [0, 0]
    single = seq2seq.generate(src[1:], max_new_tokens=5, num_beams=3, eos_token_id=2)
    assert out[1, : single.shape[1]].tolist() == single[0].tolist()


def test_bad_requests_are_named(decoder, registry):
    ids = torch.randint(0, 30, (2, 4))
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    with pytest.raises(ValueError, match="left padding"):
        decoder.generate(ids, mask)
    with pytest.raises(ValueError, match="max_new_tokens"):
        decoder.generate(ids, max_new_tokens=0)
    encoder = txblocks.build(txblocks.load_spec(
        {"arch": "encoder", "vocab_size": 30, "d_model": 16, "n_layers": 1, "n_heads": 2, "head": "lm"},
        registry=registry))
    with pytest.raises(ValueError, match="decoder or seq2seq"):
        encoder.generate(ids)


def test_logits_to_keep_gives_the_last_positions_of_the_full_logits(decoder, gen):
    ids = torch.randint(0, 30, (2, 9), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    with torch.no_grad():
        full = decoder(ids, mask).logits
        for keep in (1, 4):
            torch.testing.assert_close(decoder(ids, mask, logits_to_keep=keep).logits,
                                       full[:, -keep:], rtol=1e-5, atol=1e-5)  # BLAS blocking
    with pytest.raises(ValueError, match="logits_to_keep must be >= 1"):
        decoder(ids, logits_to_keep=0)
