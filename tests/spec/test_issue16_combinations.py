"""Issue 16's new spec fields: the combinations that cannot build are spec errors at
validation, each naming its path (the block field, or the override that sets it)."""

from __future__ import annotations

from typing import Any

import pytest

import txblocks
from txblocks import SpecError

BASE: dict[str, Any] = {"arch": "decoder", "vocab_size": 50, "d_model": 32, "n_layers": 4,
                        "n_heads": 4, "block": {"norm": "rmsnorm"}}  # fmt: skip


def _spec(**changes: Any) -> dict[str, Any]:
    return {**BASE, **changes}


BAD = {
    "shared-norm-without-parallel": (
        _spec(block={"shared_norm": True}),
        r"block\.shared_norm: true needs layout: parallel .*got layout 'pre_norm'$"),
    "shared-norm-by-an-override": (
        _spec(block={"layout": "parallel"}, layers=[{"select": 2, "layout": "pre_norm",
                                                     "shared_norm": True}]),
        r"layers\[0\]\.shared_norm: true needs layout: parallel .*\(layers \[2\]\)"),
    "post-norms-with-reordered-norm": (
        _spec(block={"layout": "reordered_norm", "post_attention_norm": True}),
        r"block\.post_attention_norm: layout reordered_norm already norms each branch's output"),
    "qk-norm-over-width-without-qk-norm": (
        _spec(block={"attention": {"qk_norm_over": "width"}}),
        r"block\.attention\.qk_norm_over: 'width' says what attention\.qk_norm normalizes"),
    "qk-norm-over-width-by-an-override": (
        _spec(layers=[{"select": "odd", "attention": {"qk_norm_over": "width"}}]),
        r"layers\[0\]\.attention\.qk_norm_over: .*\(layers \[1, 3\]\)"),
    "project-out-without-width": (
        _spec(embedding={"project_out": True}),
        r"embedding\.project_out: .*there is no width; set embedding\.width"),
    "project-out-in-seq2seq": (
        {"extends": "t5-small", "n_layers": 2, "embedding": {"width": 16, "project_out": True}},
        r"embedding\.project_out: seq2seq models cannot project their output"),
    "tied-head-over-another-width": (
        _spec(embedding={"width": 16}, head={"type": "lm", "tie_embeddings": True}),
        r"head\.tie_embeddings: a tied lm head reads the token table, 16 wide .* hidden "
        r"states are 32 wide"),
    "groups-not-dividing": (
        _spec(share_layers={"groups": 3}),
        r"share_layers\.groups: 3 groups do not divide 4 layers; use one of 1, 2, 4"),
    "groups-not-dividing-a-stack": (
        {"extends": "t5-small", "n_layers": 2, "decoder_layers": 3, "share_layers": {"groups": 2}},
        r"share_layers\.groups: 2 groups do not divide the decoder stack's 3 layers"),
    "shared-layers-that-differ": (
        _spec(share_layers={"groups": 2}, layers=[{"select": 3, "ffn": {"type": "glu"}}]),
        r"share_layers: decoder layers 2 and 3 share one block, .*\(ffn\)"),
    "softcap-not-positive": (
        _spec(head={"type": "lm", "final_softcap": 0}), r"head\.final_softcap: input should be greater than 0"),
    "width-zero": (_spec(embedding={"width": 0}), r"embedding\.width"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_combinations_that_cannot_build_are_spec_errors(registry, case):
    spec, match = BAD[case]
    with pytest.raises(SpecError, match=match):
        txblocks.load_spec(spec, registry=registry)


GOOD = {
    "gemma2-sandwich": _spec(block={"post_attention_norm": True, "post_ffn_norm": True},
                             head={"type": "lm", "final_softcap": 30.0}),
    "olmo2": _spec(block={"layout": "reordered_norm",
                          "attention": {"qk_norm": "rmsnorm", "qk_norm_over": "width"}}),
    "gptj": _spec(block={"layout": "parallel", "shared_norm": True}),
    "opt-350m": _spec(embedding={"width": 16, "project_at": "tokens", "project_bias": False,
                                 "project_out": True}),
    "albert": {**_spec(arch="encoder", embedding={"width": 16, "norm": "layernorm"},
                       share_layers={"groups": 1}), "head": "mlm"},
    "umt5": {"extends": "t5-small", "n_layers": 2,
             "position": {"type": "relative_bias", "per_layer": True}},
    "masks-may-differ-in-a-run": _spec(share_layers={"groups": 1}, layers=[
        {"select": "odd", "attention": {"mask": {"type": "sliding_window", "window": 2}}}]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(GOOD))
def test_the_combinations_families_need_validate_and_build(registry, case):
    spec = txblocks.load_spec(GOOD[case], registry=registry)
    assert txblocks.load_spec(spec.to_yaml(), registry=registry) == spec  # round trip
    txblocks.build(spec, registry=registry)
