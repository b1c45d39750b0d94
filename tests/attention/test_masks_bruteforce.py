"""Every registered mask strategy against its brute-force definition (loops over positions)."""

from __future__ import annotations

import pydantic
import pytest
import torch

from txblocks.attention.mask import BlockDiagonalMask, CausalMask, FullMask, PrefixLMMask
from txblocks.attention.strategies import MaskStrategy

CPU = torch.device("cpu")


@pytest.mark.parametrize("padding", ["none", "right", "left"])
@pytest.mark.parametrize("shape", ["square", "cache", "top_left", "step"])
def test_mask_matches_brute_force(mask_case, shape, padding, make_mask, brute_keep):
    built = make_mask(mask_case, batch=3, shape=shape, padding=padding)
    mask, want = built.mask, brute_keep(mask_case, built)  # want: (B, Tq, Tk)
    assert isinstance(built.strategy, MaskStrategy)
    assert (mask.q_len, mask.k_len, mask.q_offset) == (built.q_len, built.k_len, built.q_offset)

    keep = mask.keep(CPU)
    got = torch.ones_like(want) if keep is None else keep.expand(3, 1, -1, -1)[:, 0]
    assert torch.equal(got, want)

    empty = mask.empty_rows(CPU)
    got_empty = torch.zeros(3, 1, built.q_len, 1, dtype=torch.bool) if empty is None else empty
    assert torch.equal(got_empty.expand(3, 1, -1, 1).reshape(3, -1), ~want.any(-1))

    additive = mask.additive(torch.float32, CPU)
    dense = torch.zeros(3, 1, built.q_len, built.k_len) if additive is None else additive
    expected = torch.where(want, 0.0, torch.finfo(torch.float32).min)
    assert torch.equal(dense.expand(3, 1, -1, -1)[:, 0], expected)

    if built.strategy.causal:  # a causal strategy never lets a query see a later key
        q_pos = built.q_offset + torch.arange(built.q_len)[:, None]
        later = torch.arange(built.k_len)[None, :] > q_pos
        assert not (want & later).any()


@pytest.mark.parametrize("shape", ["square", "cache", "top_left", "step"])
def test_structure_excludes_padding_and_bias(mask_case, shape, make_mask, brute_keep):
    built = make_mask(mask_case, batch=2, shape=shape, padding="left")
    unpadded = make_mask(mask_case, batch=2, shape=shape, padding="none")
    structure = built.mask.structure(CPU)
    # the random call arguments differ between the two builds; compare with brute force
    unpadded.seq_lens, unpadded.prefix_lengths = built.seq_lens, built.prefix_lengths
    want = brute_keep(mask_case, unpadded)
    got = torch.ones_like(want) if structure is None else structure.expand(2, -1, -1)
    assert torch.equal(got, want)


@pytest.mark.parametrize("shape", ["square", "cache", "top_left", "step"])
def test_sdpa_form_is_exact(mask_case, shape, make_mask, brute_keep):
    built = make_mask(mask_case, batch=2, shape=shape, padding="none")
    want = brute_keep(mask_case, built)
    attn_mask, is_causal = built.mask.sdpa(torch.float32, CPU)
    if is_causal:  # SDPA's is_causal: top-left lower triangle
        assert attn_mask is None
        assert torch.equal(want, torch.ones_like(want).tril().expand_as(want))
    elif attn_mask is None:
        assert want.all()
    else:
        assert torch.equal(attn_mask.expand(2, 1, -1, -1)[:, 0] == 0, want)


def test_additive_adds_bias_where_kept(mask_case, make_mask, brute_keep, gen):
    built = make_mask(mask_case, batch=2, shape="cache", padding="right")
    bias = torch.randn(1, 4, built.q_len, built.k_len, generator=gen)
    mask = built.mask.with_bias(bias).with_bias(bias)
    want = brute_keep(mask_case, built)[:, None]  # (B, 1, Tq, Tk)
    got = mask.additive(torch.float32, CPU)
    expected = torch.where(want, 2 * bias, torch.finfo(torch.float32).min)
    assert got.shape == (2, 4, built.q_len, built.k_len)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert built.mask.bias is None  # with_bias returns a copy


def test_masks_validate_their_arguments():
    with pytest.raises(ValueError, match="window must be >= 1"):
        CausalMask(4, 4, window=0)
    with pytest.raises(ValueError, match="key_padding must be a bool tensor"):
        FullMask(4, 4, key_padding=torch.ones(2, 4))
    with pytest.raises(ValueError, match="bias must be"):
        FullMask(4, 5, bias=torch.zeros(1, 1, 5, 4))
    with pytest.raises(ValueError, match=r"seq_lens\[1\] = \[2, 1\]"):
        BlockDiagonalMask(4, 4, seq_lens=[[4], [2, 1]])
    with pytest.raises(ValueError, match="prefix_lengths"):
        PrefixLMMask(4, 4, prefix_lengths=[-1, 2])


def test_strategies_validate_config(registry):
    entry = registry.get("mask", "sliding_window")
    with pytest.raises(pydantic.ValidationError):
        entry.config(window=0)
    with pytest.raises(pydantic.ValidationError):
        entry.config()  # window is required
    with pytest.raises(pydantic.ValidationError):
        registry.get("mask", "prefix_lm").config(length=-1)
    prefix = registry.get("mask", "prefix_lm")
    strategy = prefix.factory(prefix.config(length=2))
    with pytest.raises(ValueError, match="prefix_lm does not support packed sequences"):
        strategy(4, 4, seq_lens=[[2, 2]])


def test_causal_attribute(registry):
    def build(name, **params):
        entry = registry.get("mask", name)
        return entry.factory(entry.config(**params))

    assert build("causal").causal and build("sliding_window", window=2).causal
    assert not build("none").causal and not build("prefix_lm", length=2).causal
    assert build("block_diagonal").causal and not build("block_diagonal", causal=False).causal


def test_every_registered_mask_has_a_docstring(registry):
    for entry in registry.entries("mask"):
        assert entry.description, entry.name
        assert entry.config.__doc__ and entry.factory.__doc__
