"""ELECTRA: BERT's encoder, same numbers as Hugging Face, with ELECTRA-small's narrower
embeddings projected to the hidden size (``embedding.width``).

Tiny random models (d_model 48, 6 heads, 2 layers; embedding size 48, or 16 and 64 with a
projection), every parameter perturbed, query and key weights scaled up, a right-padded batch
with token types, fp32, eval mode: hidden states and logits within 1e-4 on real positions,
and ``to_hf(from_hf(m))`` equal to ``m``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

import txblocks
from txblocks.hf import HFConversionError, from_hf, spec_from_hf, to_hf

from .conftest import both_ways, encoder_parity, padded_batch, perturbed, scaled

QK = (".query.", ".key.")


def electra(cls: str, **kw: Any) -> Callable[[], Any]:
    base = {"num_hidden_layers": 2, "hidden_size": 48, "embedding_size": 48,
            "num_attention_heads": 6, "vocab_size": 97, "intermediate_size": 72,
            "max_position_embeddings": 40, "type_vocab_size": 3, "initializer_range": 0.1,
            "num_labels": 5, "pad_token_id": 1}  # fmt: skip
    config = transformers.ElectraConfig(**{**base, **kw})
    return lambda: scaled(perturbed(lambda: getattr(transformers, cls)(config)), QK)


CASES = {
    "mlm": electra("ElectraForMaskedLM"),
    # the generator head's GELU is fixed whatever hidden_act says
    "mlm-untied-silu": electra("ElectraForMaskedLM", tie_word_embeddings=False, hidden_act="silu"),
    "base": electra("ElectraModel"),
    "token-cls": electra("ElectraForTokenClassification", classifier_dropout=0.3),
    # ELECTRA-small: embeddings narrower than the blocks (embeddings_project), or wider
    "small-mlm": electra("ElectraForMaskedLM", embedding_size=16),
    "small-mlm-untied": electra("ElectraForMaskedLM", embedding_size=16,
                                tie_word_embeddings=False),
    "small-base": electra("ElectraModel", embedding_size=16),
    "wide-token-cls": electra("ElectraForTokenClassification", embedding_size=64),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_same_numbers_both_ways(case: str) -> None:
    hf = CASES[case]()
    encoder_parity(hf, token_types=3)
    both_ways(hf, padded_batch("right", 97))


def test_spec() -> None:
    spec = spec_from_hf(CASES["mlm-untied-silu"]())
    assert (spec.block.ffn.activation.type, spec.head.activation.type) == ("silu", "gelu")
    assert (spec.embedding.token_types, spec.head.tie_embeddings) == (3, False)


def test_small_spec_and_weights() -> None:
    """ELECTRA-small: 16-wide tables, norm and MLM head, projected to 48 with a bias."""
    hf = CASES["small-mlm"]()
    spec = spec_from_hf(hf)
    embedding = spec.embedding
    assert (embedding.width, embedding.project_at, embedding.project_bias,
            embedding.project_out) == (16, "end", True, False)  # fmt: skip
    model = from_hf(hf)
    assert torch.equal(model.embeddings.project.weight, hf.electra.embeddings_project.weight)
    assert model.embeddings.norm.weight.shape == (16,) and model.head.dense.weight.shape == (16, 48)
    assert model.head.decoder.proj.weight is model.embeddings.tokens.weight
    assert spec_from_hf(CASES["mlm"]()).embedding.width is None  # no projection in HF either


def test_a_projection_of_equal_widths_is_not_electra() -> None:
    """HF's ELECTRA projects only when the widths differ: width = d_model is refused."""
    model = from_hf(CASES["mlm"]())
    data = model.spec.model_dump(mode="json")
    data["embedding"]["width"] = 48
    with pytest.raises(HFConversionError, match=r"electra: embedding\.width"):
        to_hf(txblocks.build(data), family="electra")


def test_a_bert_spec_goes_to_electra_when_asked() -> None:
    torch.manual_seed(0)
    model = txblocks.build({"extends": "bert-base", "n_layers": 2, "d_model": 48, "n_heads": 6,
                            "vocab_size": 50, "max_seq_len": 20,
                            "block": {"ffn": {"hidden": 40}}}).eval()  # fmt: skip
    hf = to_hf(model, family="electra")
    assert type(hf).__name__ == "ElectraForMaskedLM" and hf.config.embedding_size == 48
    x = {k: v.clamp(max=49) for k, v in padded_batch("right", 50).items()}
    with torch.no_grad():
        expected = model(x["input_ids"], x["attention_mask"]).logits
        got = hf(**x).logits
    keep = x["attention_mask"].bool()
    assert (expected[keep] - got[keep]).abs().max() <= 1e-4
