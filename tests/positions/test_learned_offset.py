"""Learned absolute positions: the offset, and a clear error past max_seq_len."""

from __future__ import annotations

import pytest
import torch

from txblocks.nn.positions import LearnedPositions


@pytest.mark.parametrize("offset", [0, 2])
def test_position_p_reads_row_p_plus_offset(offset: int, gen: torch.Generator) -> None:
    d_model, max_seq_len = 6, 10
    scheme = LearnedPositions(d_model, max_seq_len, offset=offset)
    with torch.no_grad():
        scheme.embedding.weight.copy_(torch.randn(max_seq_len + offset, d_model, generator=gen))
    assert scheme.embedding.weight.shape == (max_seq_len + offset, d_model)
    ids = torch.randint(0, max_seq_len, (2, 7), generator=gen)
    got = scheme.embed(ids)
    assert got.shape == (2, 7, d_model)
    for b in range(2):
        for t in range(7):
            torch.testing.assert_close(got[b, t], scheme.embedding.weight[ids[b, t] + offset])


@pytest.mark.parametrize("offset", [0, 2])
def test_last_position_is_allowed_and_the_next_one_is_a_clear_error(offset: int) -> None:
    scheme = LearnedPositions(4, 8, offset=offset)
    scheme.embed(torch.tensor([[7]]))
    with pytest.raises(ValueError, match=r"position 8 is outside \[0, 8\).*max_seq_len=8"):
        scheme.embed(torch.arange(9)[None])
    with pytest.raises(ValueError, match=r"position -1 is outside"):
        scheme.embed(torch.tensor([[-1, 0]]))


def test_gradients_reach_the_table() -> None:
    scheme = LearnedPositions(4, 8, offset=2)
    scheme.embed(torch.tensor([[0, 3]])).sum().backward()
    grad = scheme.embedding.weight.grad
    assert grad is not None
    assert grad[[2, 5]].abs().sum() > 0
    assert grad[[0, 1, 3, 4, 6, 7, 8, 9]].abs().sum() == 0
