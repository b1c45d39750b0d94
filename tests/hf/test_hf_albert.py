"""ALBERT <-> txblocks: same numbers as Hugging Face, both ways.

Tiny random models (d_model 48, 6 heads, 3 layers sharing one block, embeddings 16 wide and
projected to 48), every parameter perturbed, query and key weights scaled up, a right-padded
batch with token types, fp32, eval mode: hidden states and logits within 1e-4 on real
positions, ``to_hf(from_hf(m))`` equal to ``m``. The shared block is one set of parameters:
the txblocks model has exactly HF's parameters (its pooler aside), counted once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

import txblocks
from txblocks.build import model_size
from txblocks.hf import HFConversionError, from_hf, spec_from_hf, to_hf
from txblocks.summary import summarize

from .conftest import both_ways, encoder_parity, padded_batch, perturbed, scaled

QK = (".query.", ".key.")


def albert(cls: str, **kw: Any) -> Callable[[], Any]:
    base = {"num_hidden_layers": 3, "hidden_size": 48, "embedding_size": 16,
            "num_attention_heads": 6, "vocab_size": 97, "intermediate_size": 72,
            "max_position_embeddings": 40, "type_vocab_size": 3, "initializer_range": 0.1,
            "pad_token_id": 1}  # fmt: skip
    config = transformers.AlbertConfig(**{**base, **kw})
    return lambda: scaled(perturbed(lambda: getattr(transformers, cls)(config)), QK)


CASES = {
    "mlm": albert("AlbertForMaskedLM"),
    "mlm-untied-gelu": albert("AlbertForMaskedLM", tie_word_embeddings=False, hidden_act="gelu"),
    "base": albert("AlbertModel"),
    "base-one-group-per-layer": albert("AlbertModel", num_hidden_groups=3),
    "mlm-equal-widths": albert("AlbertForMaskedLM", embedding_size=48),  # still projected
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_same_numbers_both_ways(case: str) -> None:
    hf = CASES[case]()
    encoder_parity(hf, token_types=3)
    # untied, HF keeps two biases: decoder.bias (used, read) and bias (unused, written back
    # as the used one)
    unread = ("predictions.bias",) if "untied" in case else ()
    both_ways(hf, padded_batch("right", 97), unread=unread)


def test_spec() -> None:
    spec = spec_from_hf(CASES["mlm"]())
    embedding = spec.embedding
    assert (embedding.width, embedding.project_at, embedding.project_bias,
            embedding.token_types) == (16, "end", True, 3)  # fmt: skip
    assert spec.share_layers.groups == 1 and spec.block.layout == "post_norm"
    assert (spec.head.type, spec.head.activation.type, spec.head.tie_embeddings) == (
        "mlm", "gelu_tanh", True)  # fmt: skip
    assert spec_from_hf(CASES["base-one-group-per-layer"]()).share_layers is None


def test_one_block_counted_once() -> None:
    hf = CASES["mlm"]()
    model = from_hf(hf)
    assert all(block is model.blocks[0] for block in model.blocks)
    ours = sum(p.numel() for p in model.parameters())
    theirs = sum(p.numel() for p in hf.parameters())  # tied weights and biases once
    assert ours == theirs
    assert model_size(model.spec).parameters == ours
    summary = summarize(model.spec, model=model, seq_len=8)
    assert summary.parameters == ours
    assert [row.parameters for row in summary.layers][1:] == [0, 0]


def test_greedy_tokens_of_the_mlm_head() -> None:
    """Argmax of the masked-LM logits, position by position, as HF's."""
    hf = CASES["mlm"]()
    x = padded_batch("right", 97)
    with torch.no_grad():
        expected = hf(**x).logits.argmax(-1)
        got = from_hf(hf)(x["input_ids"], x["attention_mask"]).logits.argmax(-1)
    keep = x["attention_mask"].bool()
    assert torch.equal(expected[keep], got[keep])


def test_unsupported_groups_are_listed() -> None:
    config = transformers.AlbertConfig(hidden_size=48, num_attention_heads=6, embedding_size=16,
                                       num_hidden_layers=4, num_hidden_groups=2,
                                       inner_group_num=2)  # fmt: skip
    with pytest.raises(HFConversionError) as info:
        spec_from_hf(config)
    assert {p.path for p in info.value.problems} == {"num_hidden_groups", "inner_group_num"}


def test_a_bert_spec_is_not_albert() -> None:
    """Without a factorized embedding, ALBERT has no config for the model."""
    model = txblocks.build({"extends": "bert-base", "n_layers": 2, "d_model": 48, "n_heads": 6,
                            "vocab_size": 50, "max_seq_len": 20,
                            "block": {"ffn": {"hidden": 40}}})  # fmt: skip
    with pytest.raises(HFConversionError, match=r"albert: embedding\.width"):
        to_hf(model, family="albert")
