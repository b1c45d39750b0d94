"""Two specs that used to pass validation and fail later (issue 16): each is refused as
early as it can be, naming the spec path."""

from __future__ import annotations

import pytest

import txblocks
from txblocks import BuildError, SpecError


def test_a_parallel_layout_in_a_seq2seq_decoder_is_a_spec_error(registry):
    with pytest.raises(SpecError, match=r"block\.layout: decoder layers \[0, 1\] would use the "
                                        r"parallel layout"):  # fmt: skip
        txblocks.load_spec({"extends": "t5-small", "n_layers": 2, "block": {"layout": "parallel"}},
                           registry=registry)
    with pytest.raises(SpecError, match=r"layers\[0\]\.layout: decoder layers \[1\]"):
        txblocks.load_spec({"extends": "t5-small", "n_layers": 2, "layers": [
            {"stack": "decoder", "select": 1, "layout": "parallel"}]}, registry=registry)
    encoder_only = txblocks.load_spec({"extends": "t5-small", "n_layers": 2, "layers": [
        {"stack": "encoder", "select": "all", "layout": "parallel"}]}, registry=registry)
    assert encoder_only.block_for(0, "encoder").layout == "parallel"


def test_softcap_with_a_kernel_that_cannot_softcap_fails_at_build(registry):
    spec = {"extends": "gpt2", "n_layers": 2, "d_model": 32, "n_heads": 4, "vocab_size": 50,
            "block": {"attention": {"kernel": "sdpa", "softcap": 30.0}}}
    with pytest.raises(BuildError, match=r"block\.attention\.softcap: kernel 'sdpa' cannot "
                                         r"softcap.*'eager'"):  # fmt: skip
        txblocks.build(txblocks.load_spec(spec, registry=registry))
    spec["block"]["attention"]["kernel"] = "auto"  # auto runs softcap through eager
    txblocks.build(txblocks.load_spec(spec, registry=registry))
