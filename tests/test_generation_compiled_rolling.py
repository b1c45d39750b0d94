"""The rolling cache of sliding-window layers in the compiled decoding step.

A sliding-window layer keeps a static buffer of ``window`` slots (slot s at s % window)
instead of the full cache length; greedy tokens must equal eager decoding's, with prompts
longer than the window and left padding.
"""

from __future__ import annotations

import pytest
import torch

import txblocks
from txblocks.nn.cache import LayerCache, StaticKVCache

TINY = {"n_layers": 2, "d_model": 32, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 64,
        "max_seq_len": 128, "init_std": 0.2}
TRACE = {"compile": True, "compile_backend": "eager"}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _mistral(registry, window: int, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    block = {"ffn": {"hidden": 64}, "attention": {"mask": {"type": "sliding_window", "window": window}}}
    spec = {"extends": "mistral", "arch": "decoder", **TINY, "block": block, **overrides}
    return txblocks.build(txblocks.load_spec(spec, registry=registry)).eval()


def _prompts(batch: int = 3, length: int = 11):
    ids = torch.randint(1, 64, (batch, length), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    mask[2, :8] = 0  # 3 real tokens: shorter than the window
    return ids, mask


def _same_as_eager(model, ids, mask, **settings):
    expected = model.generate(ids, mask, **settings)
    got = model.generate(ids, mask, **settings, **TRACE)
    assert torch.equal(got, expected), f"\neager    {expected}\ncompiled {got}"


@pytest.mark.parametrize("window", [1, 4, 7])
def test_greedy_equals_eager_with_prompts_longer_than_the_window(registry, window):
    model = _mistral(registry, window)
    ids, mask = _prompts()
    _same_as_eager(model, ids, mask, max_new_tokens=20)  # the buffer wraps several times


@pytest.mark.parametrize("position", ["alibi", "relative_bias", "learned"])
def test_rolling_buffers_with_positional_biases_and_global_layers(registry, position):
    model = _mistral(registry, 5, position=position, n_layers=3,
                     layers=[{"select": 1, "attention": {"mask": "causal"}}])
    ids, mask = _prompts()
    _same_as_eager(model, ids, mask, max_new_tokens=16)


def test_a_sliding_window_layer_keeps_window_slots(registry):
    model = _mistral(registry, 4, layers=[{"select": 1, "attention": {"mask": "causal"}}])
    windows = [s.cache_window for s in model.masks]
    cache = StaticKVCache.empty([(2, 8)] * 2, 3, 64, dtype=torch.float32, device=torch.device("cpu"),
                                windows=windows)
    assert [layer.k.shape[1] for layer in cache.layers] == [4, 64]
    assert [layer.rolling for layer in cache.layers] == [True, False]
    wide = StaticKVCache.empty([(2, 8)], 1, 64, dtype=torch.float32, device=torch.device("cpu"),
                               windows=[100])
    assert wide.layers[0].k.shape[1] == 64 and not wide.layers[0].rolling


def test_fill_puts_slot_s_at_s_mod_window():
    prefill = LayerCache(1, 6, 1, 1, dtype=torch.float32, device=torch.device("cpu"), window=4)
    keys = torch.arange(6.0).reshape(1, 6, 1, 1)  # positions 0..5: the buffer keeps 2..5
    prefill.append(keys, keys)
    cache = StaticKVCache.empty([(1, 1)], 1, 64, dtype=torch.float32, device=torch.device("cpu"),
                                windows=[4])

    class Prefill:
        layers, cross, position = [prefill], [], 6

    cache.fill(Prefill(), None)  # type: ignore[arg-type]
    assert cache.layers[0].k.flatten().tolist() == [4.0, 5.0, 2.0, 3.0]
    assert int(cache.index) == 6
