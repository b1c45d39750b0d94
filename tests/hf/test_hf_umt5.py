"""UMT5: T5's network with a relative-bias table in every layer, same numbers as Hugging
Face, both ways.

Tiny random models (d_model 48, d_kv 10 ≠ 48 / 6, 2 encoder and 3 decoder layers, 8 buckets
up to distance 12 so that sources of 11 tokens reach the logarithmic buckets), every parameter
perturbed, query and key weights and every bias table scaled up, right-padded sources and
targets, fp32, eval mode: encoder output, decoder hidden states and logits within 1e-4 on
real positions, greedy generation token for token, ``to_hf(from_hf(m))`` equal to ``m``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

import txblocks
from txblocks.hf import HFConversionError, from_hf, spec_from_hf, to_hf

from .conftest import TINY_T5, seq2seq_greedy, t5_checks, tiny_t5


def umt5(cls: str, *, untie: bool = False, **kw: Any) -> Callable[[], Any]:
    return tiny_t5("UMT5Config", cls, {**TINY_T5, **kw}, untie=untie)


CASES = {
    "lm-tied-scaled-gated-gelu": umt5("UMT5ForConditionalGeneration"),
    "lm-untied-unscaled": umt5("UMT5ForConditionalGeneration", untie=True,
                               tie_word_embeddings=False),
    "base-relu": umt5("UMT5Model", feed_forward_proj="relu"),
    "encoder": umt5("UMT5EncoderModel"),
}  # fmt: skip


test_same_numbers_both_ways = t5_checks(CASES)


def test_greedy_generation() -> None:
    # HF's generate sizes its cache by num_layers: the same depth on both sides here; an
    # untied, unscaled head as in the UMT5 checkpoints (the tied one repeats one token)
    seq2seq_greedy(umt5("UMT5ForConditionalGeneration", untie=True, num_decoder_layers=2,
                        tie_word_embeddings=False)())  # fmt: skip


def test_one_table_per_layer() -> None:
    hf = CASES["lm-tied-scaled-gated-gelu"]()
    spec = spec_from_hf(hf)
    assert (spec.position.type, spec.position.per_layer) == ("relative_bias", True)
    assert (spec.head.scale, spec.head.tie_embeddings) == ("rsqrt_d_model", True)
    model = from_hf(hf)
    for stack, n in (("encoder", 2), ("decoder", 3)):
        tables = getattr(model, stack).position.relative_attention_bias
        assert len(tables) == n
        for i, table in enumerate(tables):
            source = getattr(hf, stack).block[i].layer[0].SelfAttention.relative_attention_bias
            assert torch.equal(table.weight, source.weight)
        assert not torch.equal(tables[0].weight, tables[1].weight)
    untied_head = spec_from_hf(CASES["lm-untied-unscaled"]()).head
    assert (untied_head.scale, untied_head.tie_embeddings) == (None, False)


def test_a_t5_model_is_not_umt5() -> None:
    """One table per stack (T5) has no UMT5 config: to_hf says so."""
    model = from_hf(CASES["lm-tied-scaled-gated-gelu"]())
    data = model.spec.model_dump(mode="json")
    data["position"]["per_layer"] = False
    with pytest.raises(HFConversionError, match=r"umt5: position\.per_layer"):
        to_hf(txblocks.build(data), family="umt5")
    assert spec_from_hf(CASES["encoder"]().config, hf_class="UMT5EncoderModel").arch == "encoder"
