"""Inputs a model cannot take give one ValueError naming the argument, not a torch traceback."""

from __future__ import annotations

import pytest
import torch

import txblocks
from txblocks.nn import model as model_module
from txblocks.nn.cache import LayerCache

VOCAB, MAX = 20, 12


def _build(registry, arch="decoder", **fields):
    spec = {"arch": arch, "vocab_size": VOCAB, "max_seq_len": MAX, "d_model": 16, "n_layers": 1,
            "n_heads": 2, **fields}
    return txblocks.build(txblocks.load_spec(spec, registry=registry)).eval()


@pytest.fixture
def decoder(registry):
    return _build(registry, position="rope")


@pytest.fixture
def seq2seq(registry):
    return _build(registry, "seq2seq", position="relative_bias")


def _ids(gen, batch=2, length=5):
    return torch.randint(0, VOCAB, (batch, length), generator=gen)


# --- token ids -------------------------------------------------------------------------------


def test_an_id_past_the_vocabulary(decoder, gen):
    ids = _ids(gen)
    ids[1, 3] = VOCAB
    with pytest.raises(ValueError, match=r"^input_ids\[1, 3\] is 20, outside the vocabulary: ids "
                                         r"must be in 0\.\.19 \(vocab_size 20\)$"):
        decoder(ids)


def test_a_negative_id(decoder, gen):
    ids = _ids(gen)
    ids[0, 0] = -1
    with pytest.raises(ValueError, match=r"^input_ids\[0, 0\] is -1, outside the vocabulary"):
        decoder(ids)


def test_float_ids(decoder, gen):
    with pytest.raises(ValueError, match=r"^input_ids must hold integer ids \(torch\.long or "
                                         r"torch\.int\), got torch\.float32$"):
        decoder(_ids(gen).float())


def test_ids_that_are_not_a_tensor(decoder):
    with pytest.raises(ValueError, match=r"^input_ids must be a torch\.Tensor of token ids, got list"):
        decoder([[1, 2, 3]])


def test_int32_ids_are_fine(decoder, gen):
    ids = _ids(gen)
    with torch.no_grad():
        torch.testing.assert_close(decoder(ids.int()).logits, decoder(ids).logits)


def test_decoder_ids_of_a_seq2seq_model_are_named(seq2seq, gen):
    target = _ids(gen, length=3)
    target[0, 2] = 99
    with pytest.raises(ValueError, match=r"^decoder_input_ids\[0, 2\] is 99, outside the vocabulary"):
        seq2seq(_ids(gen), decoder_input_ids=target)


# --- token types -----------------------------------------------------------------------------


def test_token_types_out_of_range(registry, gen):
    model = _build(registry, "encoder", embedding={"token_types": 2})
    ids = _ids(gen)
    types = torch.zeros_like(ids)
    types[1, 4] = 2
    with pytest.raises(ValueError, match=r"^token_type_ids\[1, 4\] is 2, outside the model's 2 token "
                                         r"types: they must be in 0\.\.1$"):
        model(ids, token_type_ids=types)


def test_token_types_for_a_model_without_them(decoder, gen):
    ids = _ids(gen)
    with pytest.raises(ValueError, match=r"^token_type_ids given, but this model has no token types"):
        decoder(ids, token_type_ids=torch.zeros_like(ids))


# --- max_seq_len ------------------------------------------------------------------------------


@pytest.mark.parametrize("position", ["rope", "learned", "alibi", "none", "sinusoidal"])
def test_a_sequence_longer_than_max_seq_len(registry, gen, position):
    model = _build(registry, position=position)
    with pytest.raises(ValueError, match=r"^input_ids has 13 tokens, more than this model's "
                                         r"max_seq_len 12"):
        model(_ids(gen, length=MAX + 1))


def test_cached_and_new_tokens_count_together(decoder, gen):
    cache = decoder.new_cache(2, 16)
    with torch.no_grad():
        decoder(_ids(gen, length=8), cache=cache)
        with pytest.raises(ValueError, match=r"^input_ids has 5 tokens after 8 cached \(13 positions\), "
                                             r"more than this model's max_seq_len 12"):
            decoder(_ids(gen, length=5), cache=cache)


def test_position_ids_past_max_seq_len(decoder, gen):
    with pytest.raises(ValueError, match=r"^position_ids\[0, 4\] is 12, outside the model's "
                                         r"positions: they must be in 0\.\.11 \(max_seq_len 12\)$"):
        decoder(_ids(gen), position_ids=torch.arange(8, 13)[None])


def test_dynamic_rope_scaling_may_go_past_max_seq_len(registry, gen):
    model = _build(registry, position={"type": "rope", "scaling": {"type": "dynamic", "factor": 2}})
    with torch.no_grad():
        assert model(_ids(gen, length=MAX + 4)).logits.shape == (2, MAX + 4, VOCAB)


# --- caches ----------------------------------------------------------------------------------


def test_a_cache_of_another_batch_size(decoder, gen):
    cache = decoder.new_cache(3, 8)
    with pytest.raises(ValueError, match=r"^cache was created for batch size 3, but this call has 2 rows"):
        decoder(_ids(gen), cache=cache)


@pytest.mark.parametrize(("batch", "max_len", "name"), [(-1, 8, "batch"), (2, -4, "max_len"),
                                                        (0, 8, "batch"), (2, 2.5, "max_len")])
def test_bad_cache_sizes(decoder, batch, max_len, name):
    with pytest.raises(ValueError, match=rf"^new_cache: {name} must be a positive integer, got "):
        decoder.new_cache(batch, max_len)


def test_a_layer_cache_with_a_negative_window():
    with pytest.raises(ValueError, match=r"^LayerCache: window must be a positive integer, got -2"):
        LayerCache(1, 8, 2, 4, dtype=torch.float32, device=torch.device("cpu"), window=-2)


# --- generation ------------------------------------------------------------------------------


@pytest.mark.parametrize(("setting", "name"), [({"pad_token_id": VOCAB}, "pad_token_id 20"),
                                               ({"eos_token_id": [3, 25]}, "eos_token_id 25")])
def test_generation_ids_outside_the_vocabulary(decoder, gen, setting, name):
    with pytest.raises(ValueError, match=rf"^{name} is outside the vocabulary: ids must be in "
                                         rf"0\.\.19 \(vocab_size 20\)$"):
        decoder.generate(_ids(gen), max_new_tokens=2, **setting)


def test_a_decoder_start_token_outside_the_vocabulary(seq2seq, gen):
    with pytest.raises(ValueError, match=r"^decoder_start_token_id 20 is outside the vocabulary"):
        seq2seq.generate(_ids(gen), max_new_tokens=2, decoder_start_token_id=VOCAB)


def test_generating_past_max_seq_len(decoder, gen):
    with pytest.raises(ValueError, match=r"^max_new_tokens 8 after a prompt of 5 tokens needs 13 "
                                         r"positions, more than this model's max_seq_len 12: lower "
                                         r"max_new_tokens to 7 or less$"):
        decoder.generate(_ids(gen), max_new_tokens=8)


def test_a_prompt_with_a_bad_id(decoder, gen):
    ids = _ids(gen)
    ids[0, 1] = 77
    with pytest.raises(ValueError, match=r"^input_ids\[0, 1\] is 77, outside the vocabulary"):
        decoder.generate(ids, max_new_tokens=2)


@pytest.mark.parametrize(("arch", "expected"), [("decoder", 1), ("seq2seq", 2)])
def test_generation_checks_ids_once_not_per_step(registry, gen, monkeypatch, arch, expected):
    """Decoding steps feed back the model's own tokens: no range check (host sync) per step."""
    model = _build(registry, arch, position="rope" if arch == "decoder" else "relative_bias")
    calls = []
    check = model_module._check_ranges
    monkeypatch.setattr(model_module, "_check_ranges", lambda checks: calls.append(checks) or check(checks))
    out = model.generate(_ids(gen, length=3), max_new_tokens=6)
    assert out.shape[1] == (3 if arch == "decoder" else 1) + 6
    assert len(calls) == expected  # the prompt (and for seq2seq the start token), once each
