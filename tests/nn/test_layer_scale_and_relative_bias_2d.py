"""block.layer_scale (LayerScale) and position relative_bias_2d (BEiT) against plain math."""

from __future__ import annotations

import pytest
import torch

import txblocks
from txblocks.errors import BuildError
from txblocks.nn.positions.relative_bias_2d import relative_position_index_2d

VIT = {"arch": "vit", "image_size": [8, 12], "patch_size": 4, "d_model": 16, "n_layers": 2,
       "n_heads": 2}


def _build(registry, spec):
    torch.manual_seed(0)
    return txblocks.build(txblocks.load_spec(spec, registry=registry)).eval()


def test_layer_scale_multiplies_each_branch_before_the_residual_add(registry, gen):
    model = _build(registry, {**VIT, "block": {"layer_scale": 0.1}})
    block = model.blocks[0]
    assert torch.equal(block.attention_scale.gamma, torch.full((16,), 0.1))
    with torch.no_grad():
        block.attention_scale.gamma.normal_()
        block.ffn_scale.gamma.normal_()
    x = torch.randn(2, 7, 16, generator=gen)
    mask = model.attention_masks(7, device=x.device, dtype=x.dtype)[0]
    with torch.no_grad():
        h = x + block.attention(block.norm1(x), mask) * block.attention_scale.gamma
        expected = h + block.ffn(block.norm2(h)) * block.ffn_scale.gamma
        torch.testing.assert_close(block(x, mask)[0], expected, atol=1e-6, rtol=1e-6)


def test_relative_index_2d_by_brute_force():
    gh, gw = 2, 3
    rows = (2 * gh - 1) * (2 * gw - 1) + 3
    index = relative_position_index_2d((gh, gw))
    cells = [(y, x) for y in range(gh) for x in range(gw)]
    for i, (yi, xi) in enumerate(cells):
        for j, (yj, xj) in enumerate(cells):
            assert index[i + 1, j + 1] == (yi - yj + gh - 1) * (2 * gw - 1) + (xi - xj + gw - 1)
    assert index[0, 1:].eq(rows - 3).all() and index[1:, 0].eq(rows - 2).all()
    assert index[0, 0] == rows - 1
    assert len(set(index[1:, 1:].flatten().tolist())) == rows - 3


@pytest.mark.parametrize("per_layer", [False, True])
def test_relative_bias_2d_is_added_to_the_scores(registry, per_layer):
    model = _build(registry, {**VIT, "position": {"type": "relative_bias_2d", "per_layer": per_layer}})
    position = model.position
    assert len(position.tables) == (2 if per_layer else 1)
    with torch.no_grad():
        for table in position.tables:
            table.normal_()
    index = relative_position_index_2d((2, 3))
    for layer in range(2):
        bias = position.attention_bias(7, 7, 0, False, torch.device("cpu"), torch.float32,
                                       layer=layer)
        table = position.tables[layer if per_layer else 0]
        for h in range(2):
            for i in range(7):
                for j in range(7):
                    assert bias[0, h, i, j] == table[index[i, j], h]


def test_relative_bias_2d_needs_a_patch_grid(registry):
    with pytest.raises(BuildError, match="needs a patch grid"):
        _build(registry, {"arch": "encoder", "vocab_size": 10, "d_model": 16, "n_layers": 1,
                          "n_heads": 2, "position": "relative_bias_2d"})
