"""``position: {type: sinusoidal, layout: half}``: all sines, then all cosines, against the
formula written out with loops and against Hugging Face's Marian / Pegasus table."""

from __future__ import annotations

import math

import pytest
import torch

import txblocks
from txblocks.nn.positions import SinusoidalPositions


def half_table(positions: list[int], d_model: int) -> torch.Tensor:
    """Column c < h = ceil(d/2): sin(pos / 10000^(2c/d)); column h + c: cos(pos / 10000^(2c/d))."""
    h = (d_model + 1) // 2
    rows = []
    for pos in positions:
        row = []
        for col in range(d_model):
            i = col if col < h else col - h
            angle = pos / 10000 ** (2 * i / d_model)
            row.append(math.sin(angle) if col < h else math.cos(angle))
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("d_model", [8, 12, 7])
def test_half_layout_is_the_formula_inside_and_beyond_the_cache(d_model: int) -> None:
    scheme = SinusoidalPositions(d_model, 16, layout="half")
    ids = torch.tensor([[0, 1, 5, 15, 16, 40, 3]])  # cached rows, then computed on the fly
    got = scheme.embed(ids)
    torch.testing.assert_close(got[0].double(), half_table(ids[0].tolist(), d_model),
                               atol=1e-6, rtol=0)  # fmt: skip
    assert list(scheme.parameters()) == [] and scheme.state_dict() == {}  # fixed, not saved


def test_interleaved_stays_the_default() -> None:
    a, b = SinusoidalPositions(8, 4), SinusoidalPositions(8, 4, layout="interleaved")
    assert torch.equal(a.table, b.table)
    assert not torch.equal(a.table, SinusoidalPositions(8, 4, layout="half").table)
    with pytest.raises(ValueError, match="allowed: interleaved, half"):
        SinusoidalPositions(8, 4, layout="halves")  # type: ignore[arg-type]


@pytest.mark.parametrize("family", ["marian", "pegasus"])
@pytest.mark.parametrize("d_model", [48, 47])
def test_half_layout_is_hugging_faces_table(family: str, d_model: int) -> None:
    module = pytest.importorskip(f"transformers.models.{family}.modeling_{family}")
    cls = getattr(module, f"{family.capitalize()}SinusoidalPositionalEmbedding")
    want = cls(30, d_model).create_weight()  # numpy in float64, stored in float32
    got = SinusoidalPositions(d_model, 30, layout="half").table
    torch.testing.assert_close(got, want, atol=1e-7, rtol=0)


def test_spec_option_and_its_errors() -> None:
    spec = {"arch": "decoder", "vocab_size": 11, "d_model": 8, "n_layers": 1, "n_heads": 2,
            "max_seq_len": 6, "position": {"type": "sinusoidal", "layout": "half"}}  # fmt: skip
    model = txblocks.build(spec)
    assert model.position.layout == "half"
    torch.testing.assert_close(model.position.table.double(), half_table(list(range(6)), 8),
                               atol=1e-6, rtol=0)  # fmt: skip
    with pytest.raises(txblocks.SpecError, match="position.*layout"):
        txblocks.load_spec({**spec, "position": {"type": "sinusoidal", "layout": "halves"}})
