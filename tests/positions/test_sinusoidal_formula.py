"""Sinusoidal positions against the formula of Vaswani et al. 2017, computed with loops."""

from __future__ import annotations

import math

import pytest
import torch

from txblocks.nn.positions import SinusoidalPositions


def paper_table(positions: list[int], d_model: int) -> torch.Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d))."""
    rows = []
    for pos in positions:
        row = []
        for col in range(d_model):
            i = col // 2
            angle = pos / 10000 ** (2 * i / d_model)
            row.append(math.sin(angle) if col % 2 == 0 else math.cos(angle))
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("d_model", [8, 12, 7])
def test_table_is_the_paper_formula(d_model: int) -> None:
    max_seq_len = 40
    scheme = SinusoidalPositions(d_model, max_seq_len)
    got = scheme.embed(torch.arange(max_seq_len)[None])  # (1, T, d)
    assert got.shape == (1, max_seq_len, d_model)
    want = paper_table(list(range(max_seq_len)), d_model)
    torch.testing.assert_close(got[0].double(), want, atol=1e-6, rtol=0)


def test_random_positions_inside_and_beyond_the_cache(gen: torch.Generator) -> None:
    d_model, max_seq_len = 10, 16
    scheme = SinusoidalPositions(d_model, max_seq_len)
    for high in (max_seq_len, 4 * max_seq_len):  # cached rows, then computed on the fly
        ids = torch.randint(0, high, (3, 9), generator=gen)
        got = scheme.embed(ids)
        assert got.shape == (3, 9, d_model)
        assert got.dtype == torch.get_default_dtype()
        for b in range(3):
            want = paper_table(ids[b].tolist(), d_model)
            torch.testing.assert_close(got[b].double(), want, atol=1e-6, rtol=0)


def test_table_follows_module_dtype_and_is_not_a_parameter() -> None:
    scheme = SinusoidalPositions(8, 16).to(torch.float64)
    assert scheme.embed(torch.arange(4)[None]).dtype == torch.float64
    assert list(scheme.parameters()) == []
    assert scheme.state_dict() == {}
    assert scheme.attention_bias(2, 2, 0, True, torch.device("cpu"), torch.float32) is None
