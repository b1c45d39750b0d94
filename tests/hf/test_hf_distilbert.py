"""DistilBERT: a post-norm encoder without token types, same numbers as Hugging Face.

Tiny random models (d_model 48, 6 heads, 2 layers), every parameter perturbed, query and key
weights scaled up, a right-padded batch, fp32, eval mode: hidden states and logits within
1e-4 on real positions, and ``to_hf(from_hf(m))`` equal to ``m``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

transformers = pytest.importorskip("transformers")

from txblocks.hf import HFConversionError, spec_from_hf

from .conftest import both_ways, encoder_parity, padded_batch, perturbed, scaled

QK = (".q_lin.", ".k_lin.")


def distilbert(cls: str, **kw: Any) -> Callable[[], Any]:
    base = {"n_layers": 2, "dim": 48, "n_heads": 6, "hidden_dim": 72, "vocab_size": 97,
            "max_position_embeddings": 40, "initializer_range": 0.1, "num_labels": 5,
            "pad_token_id": 1}  # fmt: skip
    config = transformers.DistilBertConfig(**{**base, **kw})
    return lambda: scaled(perturbed(lambda: getattr(transformers, cls)(config)), QK)


CASES = {
    "mlm": distilbert("DistilBertForMaskedLM"),
    "mlm-untied-gelu-new": distilbert("DistilBertForMaskedLM", tie_word_embeddings=False,
                                      activation="gelu_new"),
    # the table is trainable in HF: the flag only initialises it
    "base-sinusoidal-init": distilbert("DistilBertModel", sinusoidal_pos_embds=True),
    "token-cls-relu": distilbert("DistilBertForTokenClassification", activation="relu"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_same_numbers_both_ways(case: str) -> None:
    hf = CASES[case]()
    encoder_parity(hf)
    both_ways(hf, padded_batch("right", 97))


def test_spec() -> None:
    spec = spec_from_hf(CASES["mlm-untied-gelu-new"]())
    assert (spec.embedding.token_types, spec.embedding.norm.eps, spec.block.norm.eps) == (
        0, 1e-12, 1e-12)  # fmt: skip
    assert (spec.block.layout, spec.block.ffn.hidden, spec.block.ffn.activation.type) == (
        "post_norm", 72, "gelu_tanh")  # fmt: skip
    assert (spec.head.type, spec.head.tie_embeddings, spec.head.activation.type) == (
        "mlm", False, "gelu_tanh")  # fmt: skip


def test_refused_options_and_classes() -> None:
    with pytest.raises(HFConversionError, match="activation: 'mish'"):
        spec_from_hf(transformers.DistilBertConfig(activation="mish"))
    # its classifier has a ReLU pre-classifier, which txblocks' heads do not have
    with pytest.raises(HFConversionError, match="DistilBertForTokenClassification"):
        spec_from_hf(transformers.DistilBertConfig(),
                     hf_class="DistilBertForSequenceClassification")
