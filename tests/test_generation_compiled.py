"""generate(compile=True): the compiled static-shape decoding step against eager decoding.

Every decoder family of examples/specs, shrunk, must give the same greedy tokens as eager
decoding, with left-padded batches. Dynamo traces with the `eager` backend (the same
graph inductor would get, fullgraph, without generating code), so the tests stay quick.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

import txblocks
from txblocks.generation.compiled import CACHE_BUCKET, cache_length
from txblocks.nn.positional import PositionalScheme

TINY = {"n_layers": 2, "d_model": 32, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 64,
        "max_seq_len": 128, "init_std": 0.2}
FAMILIES = {
    "gpt2": {"block": {"ffn": {"hidden": 64}}, "n_kv_heads": 4},
    "llama": {"block": {"ffn": {"hidden": 64}}},
    "mistral": {"block": {"ffn": {"hidden": 64}, "attention": {"mask": {"type": "sliding_window",
                                                                       "window": 5}}}},
    "mixtral": {"block": {"attention": {"mask": {"type": "sliding_window", "window": 5}},
                          "ffn": {"experts": 4, "expert": {"hidden": 48}}}},
}
#: Traces, without generating code: the step's graph, fullgraph, quickly.
TRACE = {"compile": True, "compile_backend": "eager"}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _build(registry, base: str | None = None, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    spec = {"arch": "decoder", **TINY, **overrides}
    if base is not None:
        spec = {"extends": base, **spec}
    return txblocks.build(txblocks.load_spec(spec, registry=registry)).eval()


def _prompts(batch: int = 3, length: int = 9, vocab: int = 64):
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(1, vocab, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    mask[2, :6] = 0
    return ids, mask


def _same_as_eager(model, ids, mask, **settings):
    expected = model.generate(ids, mask, **settings)
    got = model.generate(ids, mask, **settings, **TRACE)
    assert torch.equal(got, expected), f"\neager    {expected}\ncompiled {got}"
    return got


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_equals_eager_for_each_family(registry, family):
    model = _build(registry, family, **FAMILIES[family])
    ids, mask = _prompts()
    _same_as_eager(model, ids, mask, max_new_tokens=16)  # past the window of 5, for mistral


@pytest.mark.parametrize("position", ["none", "sinusoidal", "alibi", "relative_bias",
                                      {"type": "rope", "theta": 500.0, "fraction": 0.5}])
def test_every_positional_scheme(registry, position):
    model = _build(registry, position=position)
    ids, mask = _prompts()
    _same_as_eager(model, ids, mask, max_new_tokens=10)


def test_alibi_with_a_sliding_window_and_other_layouts(registry):
    block = {"layout": "parallel", "attention": {"mask": {"type": "sliding_window", "window": 3}}}
    model = _build(registry, position="alibi", block=block,
                   layers=[{"select": 1, "attention": {"mask": "causal"}}])
    ids, mask = _prompts()
    _same_as_eager(model, ids, mask, max_new_tokens=10)
    moe = {"type": "moe", "experts": 3, "top_k": 2, "expert": {"type": "mlp", "hidden": 32}}
    model = _build(registry, position="learned", block={"layout": "post_norm", "ffn": moe})
    _same_as_eager(model, ids, mask, max_new_tokens=10)


def test_a_batch_without_padding_and_a_single_row(registry):
    model = _build(registry, "llama", **FAMILIES["llama"])
    ids, _ = _prompts()
    _same_as_eager(model, ids, None, max_new_tokens=12)
    _same_as_eager(model, ids[:1], None, max_new_tokens=12)


def test_end_of_sequence_repetition_penalty_and_min_length_equal_eager(registry):
    model = _build(registry, "gpt2", **FAMILIES["gpt2"])
    ids, mask = _prompts()
    free = model.generate(ids, mask, max_new_tokens=20)
    eos = [free[0, 11].item(), free[2, 14].item()]
    _same_as_eager(model, ids, mask, max_new_tokens=20, eos_token_id=eos, pad_token_id=63)
    _same_as_eager(model, ids, mask, max_new_tokens=20, eos_token_id=eos, min_new_tokens=6)
    _same_as_eager(model, ids, mask, max_new_tokens=12, repetition_penalty=1.8)


def test_stream_yields_what_eager_streaming_yields(registry):
    model = _build(registry, "mistral", **FAMILIES["mistral"])
    ids, mask = _prompts()
    free = model.generate(ids, mask, max_new_tokens=12)
    settings = {"max_new_tokens": 12, "eos_token_id": [free[0, 12].item(), free[1, 15].item()]}
    expected = list(model.stream(ids, mask, **settings))
    got = list(model.stream(ids, mask, **settings, **TRACE))
    assert len(got) == len(expected) and all(map(torch.equal, got, expected))


def test_all_rows_ending_early_cut_the_output_where_eager_stops(registry):
    model = _build(registry, "llama", **FAMILIES["llama"])
    ids, mask = _prompts()
    free = model.generate(ids, mask, max_new_tokens=30)
    eos = sorted({free[b, 9 + 1].item() for b in range(3)})  # every row stops by step 1
    got = _same_as_eager(model, ids, mask, max_new_tokens=30, eos_token_id=eos, pad_token_id=0)
    assert got.shape[1] < 9 + 30


def test_sampling_on_the_device(registry):
    model = _build(registry, "llama", **FAMILIES["llama"])
    ids, mask = _prompts()
    greedy = model.generate(ids, mask, max_new_tokens=10)
    one = model.generate(ids, mask, max_new_tokens=10, do_sample=True, top_k=1, seed=3, **TRACE)
    narrow = model.generate(ids, mask, max_new_tokens=10, do_sample=True, top_p=1e-6, seed=3, **TRACE)
    assert torch.equal(one, greedy) and torch.equal(narrow, greedy)
    a = model.generate(ids, mask, max_new_tokens=10, do_sample=True, temperature=2.0, seed=7, **TRACE)
    b = model.generate(ids, mask, max_new_tokens=10, do_sample=True, temperature=2.0, seed=7, **TRACE)
    c = model.generate(ids, mask, max_new_tokens=10, do_sample=True, temperature=2.0, seed=8, **TRACE)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[:, :9], ids) and not torch.equal(a, greedy)


def test_the_same_shapes_compile_nothing_more(registry):
    model = _build(registry, "llama", **FAMILIES["llama"])
    ids, mask = _prompts()
    model.generate(ids, mask, max_new_tokens=8, **TRACE)
    assert counters["stats"]["unique_graphs"] == 1
    model.generate(ids, mask, max_new_tokens=8, **TRACE)
    model.generate(ids[:, 2:], mask[:, 2:], max_new_tokens=12, **TRACE)  # same bucket of L
    assert counters["stats"]["unique_graphs"] == 1
    model.generate(ids[:2], mask[:2], max_new_tokens=8, **TRACE)  # another batch size
    assert counters["stats"]["unique_graphs"] == 2


def test_functionalized_trace(registry):
    """aot_eager functionalizes the in-place cache and state updates, as inductor does."""
    model = _build(registry, "mixtral", **FAMILIES["mixtral"])
    ids, mask = _prompts()
    expected = model.generate(ids, mask, max_new_tokens=10, repetition_penalty=1.3, eos_token_id=[7])
    got = model.generate(ids, mask, max_new_tokens=10, repetition_penalty=1.3, eos_token_id=[7],
                         compile=True, compile_backend="aot_eager")
    assert torch.equal(got, expected)


def test_cache_length_is_bucketed_within_the_model_limit():
    assert cache_length(1, None) == CACHE_BUCKET
    assert cache_length(CACHE_BUCKET + 1, None) == 2 * CACHE_BUCKET
    assert cache_length(70, 100) == 100 and cache_length(100, 100) == 100


def test_what_the_compiled_step_cannot_do_is_named(registry):
    model = _build(registry, "llama", **FAMILIES["llama"])
    ids, _ = _prompts()
    with pytest.raises(ValueError, match="beam search"):
        model.generate(ids, max_new_tokens=4, num_beams=2, **TRACE)
    odd = _build(registry, "llama", **FAMILIES["llama"])
    odd.position = type("SpiralPositions", (PositionalScheme,), {})()
    with pytest.raises(ValueError, match="positional scheme SpiralPositions"):
        odd.generate(ids, max_new_tokens=4, **TRACE)
    encoder = txblocks.build(txblocks.load_spec(
        {"arch": "encoder", "vocab_size": 64, "d_model": 16, "n_layers": 1, "n_heads": 2,
         "head": {"type": "lm"}}, registry=registry))
    with pytest.raises(ValueError, match="decoder and seq2seq models only, not encoder"):
        encoder.generate(ids, max_new_tokens=4, **TRACE)


@pytest.mark.slow
def test_inductor_generates_the_same_tokens(registry):
    """The default backend, code generated and run (about 15 s on 2 CPU cores, cold)."""
    model = _build(registry, n_layers=1, position="rope", max_seq_len=64)
    ids, mask = _prompts()
    expected = model.generate(ids, mask, max_new_tokens=8)
    assert torch.equal(model.generate(ids, mask, max_new_tokens=8, compile=True), expected)
