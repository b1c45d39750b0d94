"""Vision Transformer: patches, class and register tokens, positions, interpolation, pooling."""

from __future__ import annotations

import math

import pytest
import torch

import txblocks
from txblocks.nn.vit import sincos_2d


def _vit(registry, **changes):
    spec = {"arch": "vit", "image_size": [24, 16], "patch_size": 8, "channels": 3, "d_model": 16,
            "n_layers": 2, "n_heads": 2, "head": {"type": "classifier", "n_classes": 5}}
    spec.update(changes)
    return txblocks.build(txblocks.load_spec(spec, registry=registry)).eval()


def test_patch_embedding_is_a_linear_map_of_each_patch(registry, gen):
    model = _vit(registry, patch_position="none", class_token=False)
    pixels = torch.randn(2, 3, 24, 16, generator=gen)
    tokens = model.patch_embed(pixels)
    proj = model.patch_embed.proj
    weight = proj.weight.reshape(16, -1)
    for row in range(3):
        for col in range(2):
            patch = pixels[:, :, row * 8:(row + 1) * 8, col * 8:(col + 1) * 8].reshape(2, -1)
            torch.testing.assert_close(tokens[:, row * 2 + col], patch @ weight.T + proj.bias,
                                       atol=1e-5, rtol=1e-5)


def test_tokens_shapes_and_logits(registry, gen):
    model = _vit(registry, register_tokens=2)
    out = model(torch.randn(2, 3, 24, 16, generator=gen))
    assert out.last_hidden_state.shape == (2, 1 + 2 + 6, 16)
    assert out.logits.shape == (2, 5)
    assert model.patch_embed.prefix == 3


def test_sincos_2d_formula():
    dim, grid_h, grid_w = 8, 3, 2
    table = sincos_2d(grid_h, grid_w, dim)
    for n in range(grid_h * grid_w):
        y, x = divmod(n, grid_w)
        expected = []
        for coord in (y, x):
            omegas = [1 / 10000 ** (k / 2) for k in range(2)]
            expected += [math.sin(coord * w) for w in omegas] + [math.cos(coord * w) for w in omegas]
        torch.testing.assert_close(table[n], torch.tensor(expected), atol=1e-6, rtol=1e-6)


def test_same_size_interpolation_is_identity_and_other_sizes_run(registry, gen):
    model = _vit(registry)
    pe = model.patch_embed
    table = pe._patch_positions(pe.grid, torch.float32)
    torch.testing.assert_close(table, pe.position[:, 1:])
    bigger = model(torch.randn(1, 3, 32, 24, generator=gen))
    assert bigger.last_hidden_state.shape == (1, 1 + 4 * 3, 16)
    # interpolating to the grid it was built for gives the table back
    stretched = pe._patch_positions((6, 4), torch.float32)
    assert stretched.shape == (1, 24, 16) and torch.isfinite(stretched).all()


def test_mean_pooling_ignores_prefix_tokens(registry, gen):
    model = _vit(registry, register_tokens=1, head={"type": "classifier", "n_classes": 5, "pooling": "mean"})
    with torch.no_grad():
        out = model(torch.randn(2, 3, 24, 16, generator=gen))
        pooled = out.last_hidden_state[:, 2:].mean(1)
        torch.testing.assert_close(out.logits, model.head.out(pooled), atol=1e-6, rtol=1e-6)


def test_bad_images_are_named(registry):
    with pytest.raises(txblocks.SpecError, match="patch_size: image height 24 is not divisible by patch height 7"):
        _vit(registry, patch_size=7)
    model = _vit(registry)
    with pytest.raises(ValueError, match=r"pixel_values must be \(batch, 3, height, width\)"):
        model(torch.randn(2, 24, 16))
    with pytest.raises(ValueError, match="not divisible"):
        model(torch.randn(1, 3, 20, 16))
