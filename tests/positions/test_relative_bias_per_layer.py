"""``relative_bias {per_layer: true}`` (UMT5): each layer adds the bias of its own table,
``table_i[bucket(j - i_q), h]``, checked against the table lookup written out here, and
through a whole model against the same model built layer by layer."""

from __future__ import annotations

import pytest
import torch

import txblocks
from txblocks.nn.positions import RelativePositionBias, relative_position_bucket


def test_each_layer_reads_its_own_table(gen):
    bias = RelativePositionBias(3, num_buckets=8, max_distance=20, layers=4)
    assert bias.per_layer and len(bias.relative_attention_bias) == 4
    rel = torch.arange(6)[None, :] - (torch.arange(5)[:, None] + 1)  # q_offset 1
    buckets = relative_position_bucket(rel, bidirectional=False, num_buckets=8, max_distance=20)
    for layer, table in enumerate(bias.relative_attention_bias):
        got = bias.attention_bias(5, 6, 1, True, torch.device("cpu"), torch.float32, layer=layer)
        expected = table.weight[buckets].permute(2, 0, 1)[None]
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="one table per layer"):
        bias.attention_bias(5, 6, 1, True, torch.device("cpu"), torch.float32)


def test_one_table_stays_the_default():
    bias = RelativePositionBias(3, num_buckets=8, max_distance=20)
    assert not bias.per_layer and isinstance(bias.relative_attention_bias, torch.nn.Embedding)


@pytest.mark.parametrize("arch", ["encoder", "decoder"])
def test_model_adds_each_layers_bias(gen, arch):
    spec = {"arch": arch, "vocab_size": 30, "d_model": 16, "n_layers": 3, "n_heads": 4,
            "position": {"type": "relative_bias", "num_buckets": 8, "max_distance": 20,
                         "per_layer": True},
            "block": {"norm": "rmsnorm", "attention": {"bias": False, "scale": 1.0}}}  # fmt: skip
    model = txblocks.build(spec).eval()
    with torch.no_grad():
        for table in model.position.relative_attention_bias:
            table.weight.copy_(torch.randn(table.weight.shape, generator=gen) * 2)
    ids = torch.randint(0, 30, (2, 7), generator=gen)
    causal = arch == "decoder"
    x = model.embeddings(ids)
    strategy = model.masks[0]
    for i, block in enumerate(model.blocks):
        bias = model.position.attention_bias(7, 7, 0, causal, x.device, x.dtype, layer=i)
        x = block(x, strategy(7, 7).with_bias(bias))[0]
    torch.testing.assert_close(model(ids).last_hidden_state, model.final_norm(x),
                               atol=1e-6, rtol=1e-6)  # fmt: skip
    masks = model.attention_masks(7, device=x.device, dtype=x.dtype)
    assert len({id(m) for m in masks}) == 3  # one mask (and bias) per layer


def test_per_layer_tables_decode_with_a_cache(gen):
    spec = {"arch": "decoder", "vocab_size": 30, "d_model": 16, "n_layers": 2, "n_heads": 4,
            "position": {"type": "relative_bias", "per_layer": True}, "head": "lm"}
    model = txblocks.build(spec).eval()
    ids = torch.randint(0, 30, (2, 8), generator=gen)
    full = model(ids).logits
    cache = model.new_cache(2, 8)
    steps = [model(ids[:, :4], cache=cache).logits]
    steps += [model(ids[:, t:t + 1], cache=cache).logits for t in range(4, 8)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
