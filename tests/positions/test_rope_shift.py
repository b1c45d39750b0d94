"""RoPE makes q·k depend only on the offset between query and key positions."""

from __future__ import annotations

import pytest
import torch

from txblocks.nn.positions import LinearScaling, Llama3Scaling, RotaryPositions

SCALINGS = {
    "none": None,
    "linear": LinearScaling(factor=4.0),
    "llama3": Llama3Scaling(
        factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_seq_len=16
    ),
}


def scores(
    rope: RotaryPositions, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """(H, T, T) scores of the same q and k vectors placed at every position."""
    t = positions.shape[-1]
    tables = rope.rotary(positions[None])
    q_rot = rope.rotate(q.expand(1, t, *q.shape), tables)[0]  # (T, H, D)
    k_rot = rope.rotate(k.expand(1, t, *k.shape), tables)[0]
    return torch.einsum("mhd,nhd->hmn", q_rot.double(), k_rot.double())


@pytest.mark.parametrize("scaling", list(SCALINGS))
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_scores_depend_only_on_the_offset(
    fraction: float, interleaved: bool, scaling: str, gen: torch.Generator
) -> None:
    heads, head_dim, length = 2, 16, 24
    rope = RotaryPositions(
        head_dim, theta=100.0, fraction=fraction, interleaved=interleaved, scaling=SCALINGS[scaling]
    )
    q = torch.randn(heads, head_dim, generator=gen)
    k = torch.randn(heads, head_dim, generator=gen)
    base = scores(rope, q, k, torch.arange(length))
    for shift in (1, 5, 37, 200):
        shifted = scores(rope, q, k, torch.arange(length) + shift)
        torch.testing.assert_close(shifted, base, atol=2e-4, rtol=1e-4)
    # Within one call: the score of (m, n) equals that of (m + s, n + s).
    for s in (1, 3, 10):
        torch.testing.assert_close(base[:, s:, s:], base[:, :-s, :-s], atol=2e-4, rtol=1e-4)
    # ... and it does change with the offset itself (the rotation is not the identity).
    assert (base[:, 1:, :-1] - base[:, :-1, :-1]).abs().max() > 1e-2


def test_partial_rotation_leaves_the_tail_unchanged(gen: torch.Generator) -> None:
    rope = RotaryPositions(16, fraction=0.25)
    assert rope.rotary_dim == 4
    x = torch.randn(2, 5, 3, 16, generator=gen)
    y = rope.rotate(x, rope.rotary(torch.arange(5)[None] + 7))
    assert torch.equal(y[..., 4:], x[..., 4:])
    assert not torch.allclose(y[..., :4], x[..., :4])
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))  # a rotation keeps lengths


def test_position_zero_is_the_identity(gen: torch.Generator) -> None:
    for interleaved in (False, True):
        rope = RotaryPositions(8, interleaved=interleaved)
        x = torch.randn(1, 1, 2, 8, generator=gen)
        at_zero = rope.rotary(torch.zeros(1, 1, dtype=torch.long))
        torch.testing.assert_close(rope.rotate(x, at_zero), x)


def test_tables_are_float32_and_broadcast_over_heads() -> None:
    rope = RotaryPositions(8, fraction=0.5).to(torch.bfloat16)
    tables = rope.rotary(torch.arange(6)[None].expand(3, 6))
    assert tables.cos.shape == tables.sin.shape == (3, 6, 1, 4)
    assert tables.cos.dtype == tables.sin.dtype == torch.float32
    x = torch.randn(3, 6, 5, 8, dtype=torch.bfloat16)
    assert rope.rotate(x, tables).dtype == torch.bfloat16


@pytest.mark.parametrize("fraction", [0.2, 0.05])
def test_odd_or_zero_rotary_dim_is_rejected(fraction: float) -> None:
    with pytest.raises(ValueError, match="rotary_dim"):
        RotaryPositions(16, fraction=fraction)
