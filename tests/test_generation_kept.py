"""A decoder's cache, state and CUDA graph kept for its next generation (generation/kept.py).

On CUDA the kept graph replays on the kept tensors, so a later generation must refill those
very tensors, in place, with exactly what a new cache and state would hold. Off CUDA nothing
is kept unless ``KEEP_WITHOUT_GRAPHS`` is on, which these tests do: the compiled step then
runs on the kept tensors as a graph would, and every generation must equal eager decoding.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import txblocks
from txblocks.generation import compiled
from txblocks.generation.kept import _kept

TINY = {"extends": "mistral", "arch": "decoder", "n_layers": 2, "d_model": 32, "n_heads": 4,
        "n_kv_heads": 2, "vocab_size": 64, "max_seq_len": 128, "init_std": 0.2,
        "block": {"ffn": {"hidden": 64}, "attention": {"mask": {"type": "sliding_window",
                                                                "window": 5}}}}
TRACE = {"compile": True, "compile_backend": "eager"}


@pytest.fixture
def model(registry, monkeypatch):
    monkeypatch.setattr(compiled, "KEEP_WITHOUT_GRAPHS", True)
    torch._dynamo.reset()
    torch.manual_seed(0)
    yield txblocks.build(txblocks.load_spec(TINY, registry=registry)).eval()
    torch._dynamo.reset()


def _prompts(seed: int):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 64, (2, 8), generator=g)
    mask = torch.ones_like(ids)
    mask[1, : seed % 5 + 1] = 0  # left padding, different each time
    return ids, mask


def _addresses(model) -> list[int]:
    kept = _kept[model]
    tensors = [t for layer in kept.cache.layers for t in (layer.k, layer.v)]
    tensors += [kept.cache.key_valid, kept.cache.index]
    tensors += [v for f in dataclasses.fields(kept.state)
                if isinstance(v := getattr(kept.state, f.name), torch.Tensor)]
    return [t.data_ptr() for t in tensors]


def test_later_generations_refill_the_kept_tensors(model):
    ids, mask = _prompts(1)
    assert torch.equal(model.generate(ids, mask, max_new_tokens=10, **TRACE),
                       model.generate(ids, mask, max_new_tokens=10))
    first = _addresses(model)
    for seed in (2, 3):  # other prompts, same shapes: the same tensors, refilled
        ids, mask = _prompts(seed)
        want = model.generate(ids, mask, max_new_tokens=10)
        assert torch.equal(model.generate(ids, mask, max_new_tokens=10, **TRACE), want)
        assert _addresses(model) == first
    ids, mask = _prompts(4)  # other sampling settings: new tensors, kept in turn
    want = model.generate(ids, mask, max_new_tokens=10, repetition_penalty=1.3)
    assert torch.equal(model.generate(ids, mask, max_new_tokens=10, repetition_penalty=1.3,
                                      **TRACE), want)
    assert _addresses(model) != first


def test_a_kept_generation_in_use_is_not_shared(model):
    """Two streams of the same shapes, interleaved: the second gets its own tensors."""
    (a, mask_a), (b, mask_b) = _prompts(5), _prompts(6)
    model.generate(a, mask_a, max_new_tokens=10, **TRACE)  # leaves a kept generation
    want_a = model.generate(a, mask_a, max_new_tokens=10)[:, 8:]
    want_b = model.generate(b, mask_b, max_new_tokens=10)[:, 8:]
    got_a, got_b = [], []
    for x, y in zip(model.stream(a, mask_a, max_new_tokens=10, **TRACE),
                    model.stream(b, mask_b, max_new_tokens=10, **TRACE), strict=True):
        got_a.append(x)
        got_b.append(y)
    assert torch.equal(torch.stack(got_a, 1), want_a)
    assert torch.equal(torch.stack(got_b, 1), want_b)


def test_weights_at_new_addresses_are_not_replayed_from_the_kept_generation(model):
    """A graph reads the weights where it recorded them: after the model's tensors move
    (here a round trip through another dtype), a kept generation is not reused."""
    ids, mask = _prompts(7)
    model.generate(ids, mask, max_new_tokens=10, **TRACE)
    before = _kept[model]
    model.to(torch.float64).to(torch.float32)  # same dtype and device, new memory
    want = model.generate(ids, mask, max_new_tokens=10)
    assert torch.equal(model.generate(ids, mask, max_new_tokens=10, **TRACE), want)
    assert _kept[model] is not before
