"""generate(compile=True) for encoder–decoder models, and MoE capacities at a decoding step.

The encoder and the decoder's first step run eagerly; each later step is the compiled
static-shape step over a static self-attention cache and the encoder's fixed cross-attention
keys and values. Greedy tokens must equal eager decoding's, with padded sources.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

import txblocks
from txblocks.generation.static_moe import kept_weights
from txblocks.nn.moe import MoE, dispatch, expert_capacity, route

TINY = {"n_layers": 2, "d_model": 32, "n_heads": 4, "head_dim": 8, "vocab_size": 64,
        "max_seq_len": 128, "init_std": 0.2}
SWITCH_MOE = {"type": "moe", "experts": 4, "top_k": 1, "normalize_top_k": False,
              "capacity_factor": 1.25, "jitter": 0.01,
              "expert": {"type": "mlp", "hidden": 48, "activation": "relu", "bias": False}}
FAMILIES = {
    "t5-small": {"block": {"ffn": {"hidden": 64}}},
    "bart-base": {"block": {"ffn": {"hidden": 64}}},
    "switch-base": {"block": {"ffn": {"hidden": 64}},
                    "layers": [{"select": "odd", "ffn": SWITCH_MOE}]},
}
TRACE = {"compile": True, "compile_backend": "eager"}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _build(registry, base: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    spec = {"extends": base, "arch": "seq2seq", **TINY, **overrides}
    return txblocks.build(txblocks.load_spec(spec, registry=registry)).eval()


def _sources(batch: int = 3, length: int = 7, vocab: int = 64):
    g = torch.Generator().manual_seed(11)
    ids = torch.randint(2, vocab, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # padded sources (right padding, as tokenizers pad encoder inputs)
    mask[2, 3:] = 0
    return ids, mask


def _same_as_eager(model, ids, mask, **settings):
    expected = model.generate(ids, mask, **settings)
    got = model.generate(ids, mask, **settings, **TRACE)
    assert torch.equal(got, expected), f"\neager    {expected}\ncompiled {got}"
    return got


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_equals_eager_for_each_family(registry, family):
    model = _build(registry, family, **FAMILIES[family])
    ids, mask = _sources()
    got = _same_as_eager(model, ids, mask, max_new_tokens=12, decoder_start_token_id=1)
    assert got.shape == (3, 13) and bool((got[:, 0] == 1).all())
    _same_as_eager(model, ids, None, max_new_tokens=6)  # no padding, start = pad id


def test_end_of_sequence_and_sampling_settings(registry):
    model = _build(registry, "t5-small", **FAMILIES["t5-small"])
    ids, mask = _sources()
    free = model.generate(ids, mask, max_new_tokens=16)
    eos = [free[0, 5].item(), free[2, 9].item()]
    _same_as_eager(model, ids, mask, max_new_tokens=16, eos_token_id=eos, repetition_penalty=1.5)
    one = model.generate(ids, mask, max_new_tokens=8, do_sample=True, top_k=1, seed=0, **TRACE)
    assert torch.equal(one, free[:, :9])
    got = list(model.stream(ids, mask, max_new_tokens=8, **TRACE))
    assert torch.equal(torch.stack(got, 1), free[:, 1:9])


def test_one_compilation_per_shape(registry):
    model = _build(registry, "bart-base", **FAMILIES["bart-base"])
    ids, mask = _sources()
    model.generate(ids, mask, max_new_tokens=6, **TRACE)
    model.generate(ids, mask, max_new_tokens=10, **TRACE)  # the same bucket of L
    assert counters["stats"]["unique_graphs"] == 1


def test_functionalized_trace_of_switch(registry):
    """aot_eager functionalizes the in-place updates, as inductor does."""
    model = _build(registry, "switch-base", **FAMILIES["switch-base"])
    ids, mask = _sources()
    expected = model.generate(ids, mask, max_new_tokens=8)
    got = model.generate(ids, mask, max_new_tokens=8, compile=True, compile_backend="aot_eager")
    assert torch.equal(got, expected)


def _moe(**settings) -> MoE:
    torch.manual_seed(0)
    spec = {"arch": "decoder", "vocab_size": 64, "d_model": 16, "n_layers": 1, "n_heads": 2,
            "block": {"ffn": {"type": "moe", "experts": 4, "expert": {"type": "mlp", "hidden": 8},
                              **settings}}}
    return txblocks.build(txblocks.load_spec(spec)).blocks[0].ffn


@pytest.mark.parametrize("settings", [
    {"top_k": 1, "capacity_factor": 1.0},
    {"top_k": 2, "capacity_factor": 0.5},
    {"top_k": 2, "capacity": 1},
    {"top_k": 2, "capacity": 2, "capacity_per": "sequence"},
    {"top_k": 1, "capacity_factor": 0.3, "capacity_per": "sequence"},
])
def test_static_capacity_drops_what_dispatch_drops(settings):
    moe = _moe(**settings)
    x = torch.randn(3, 5, 16)
    flat = x.reshape(-1, 16)
    routing = route(moe.router(flat), moe.top_k, normalize=moe.normalize_top_k)
    per_sequence = moe.capacity_per == "sequence"
    capacity = moe.capacity or expert_capacity(moe.capacity_factor, 5 if per_sequence else 15,
                                               moe.top_k, 4)
    groups = torch.arange(3).repeat_interleave(5) if per_sequence else None
    tokens, weights, _, _ = dispatch(routing, 4, capacity, groups)
    expected = torch.zeros(15, 4)
    experts = routing.experts.t().reshape(-1)
    for token, weight in zip(tokens.tolist(), weights.tolist(), strict=True):
        chosen = experts.view(moe.top_k, 15)[:, token]
        for e in chosen.tolist():  # the assignment of this token kept for expert e
            if routing.weights[token, (routing.experts[token] == e).nonzero()[0, 0]] == weight:
                expected[token, e] = weight
    assert (expected > 0).sum() == tokens.numel()
    torch.testing.assert_close(kept_weights(moe, routing, x.shape), expected)


def test_moe_with_a_batch_capacity_drops_at_a_decoding_step_as_eager(registry):
    """Over the batch (B tokens a step), capacity 1 of 4 experts drops tokens, as eager does."""
    moe = {"type": "moe", "experts": 4, "top_k": 1, "capacity": 1,
           "expert": {"type": "mlp", "hidden": 32}}
    torch.manual_seed(3)
    spec = {"arch": "decoder", "extends": "llama", "n_layers": 2, "d_model": 32, "n_heads": 4,
            "n_kv_heads": 2, "vocab_size": 64, "max_seq_len": 64, "init_std": 0.2,
            "block": {"ffn": moe}}
    model = txblocks.build(txblocks.load_spec(spec, registry=registry)).eval()
    ids = torch.randint(1, 64, (6, 5), generator=torch.Generator().manual_seed(2))
    dropped = []
    model.blocks[0].ffn.register_forward_hook(
        lambda moe, args, out: dropped.append(moe.last_stats.dropped))
    expected = model.generate(ids, max_new_tokens=10)
    assert all(d > 0 for d in dropped[1:])  # eager decoding steps drop tokens
    assert torch.equal(model.generate(ids, max_new_tokens=10, **TRACE), expected)


def test_a_relative_bias_table_per_layer(registry):
    """UMT5: each decoder layer asks for its own bias table's mask."""
    position = {"type": "relative_bias", "num_buckets": 8, "max_distance": 16, "per_layer": True}
    model = _build(registry, "t5-small", position=position, **FAMILIES["t5-small"])
    ids, mask = _sources()
    _same_as_eager(model, ids, mask, max_new_tokens=8)


@pytest.mark.parametrize("layout", ["pre_norm", "post_norm", "reordered_norm"])
def test_moe_blocks_of_every_layout_with_sandwich_norms(registry, layout):
    """The static MoE path runs the block step by step: every layout, post-branch norms."""
    block = {"layout": layout, "ffn": {"hidden": 64}}
    if layout == "pre_norm":
        block |= {"post_attention_norm": True, "post_ffn_norm": True}
    moe = dict(SWITCH_MOE, top_k=2, capacity_factor=0.5)
    model = _build(registry, "switch-base", block=block, layers=[{"select": "all", "ffn": moe}])
    ids, mask = _sources()
    _same_as_eager(model, ids, mask, max_new_tokens=8)


def test_an_moe_block_with_a_part_the_static_path_does_not_know_is_refused(registry):
    model = _build(registry, "switch-base", **FAMILIES["switch-base"])
    model.decoder.blocks[1].gate = torch.nn.Identity()  # a part TransformerBlock may grow
    ids, mask = _sources()
    with pytest.raises(ValueError, match="layer 1: an MoE block with gate, which the static MoE"):
        model.generate(ids, mask, max_new_tokens=4, **TRACE)
