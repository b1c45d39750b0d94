"""XLM-RoBERTa: RoBERTa's encoder under its own config class, same numbers as Hugging Face.

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

QK = (".query.", ".key.")


def xlmr(cls: str, **kw: Any) -> Callable[[], Any]:
    base = {"num_hidden_layers": 2, "hidden_size": 48, "num_attention_heads": 6,
            "vocab_size": 97, "intermediate_size": 72, "max_position_embeddings": 40,
            "type_vocab_size": 1, "initializer_range": 0.1, "num_labels": 5,
            "pad_token_id": 1}  # fmt: skip
    config = transformers.XLMRobertaConfig(**{**base, **kw})
    return lambda: scaled(perturbed(lambda: getattr(transformers, cls)(config)), QK)


CASES = {
    "mlm": xlmr("XLMRobertaForMaskedLM"),
    "mlm-untied-relu-two-types": xlmr("XLMRobertaForMaskedLM", tie_word_embeddings=False,
                                      hidden_act="relu", type_vocab_size=2),
    "base-with-pooler": xlmr("XLMRobertaModel"),
    "token-cls": xlmr("XLMRobertaForTokenClassification", classifier_dropout=0.2),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_same_numbers_both_ways(case: str) -> None:
    hf = CASES[case]()
    types = hf.config.type_vocab_size
    encoder_parity(hf, token_types=types)
    # an untied MLM head's own `bias` is never read (its decoder.bias is)
    unread = () if hf.config.tie_word_embeddings else ("lm_head.bias",)
    both_ways(hf, padded_batch("right", 97), unread=unread)


def test_spec_is_roberta_with_offset_positions() -> None:
    spec = spec_from_hf(CASES["mlm"]())
    assert (spec.position.type, spec.position.offset, spec.max_seq_len) == ("learned", 2, 38)
    assert (spec.block.layout, spec.head.type, spec.head.activation.type) == (
        "post_norm", "mlm", "gelu")  # fmt: skip


def test_refused_options_and_classes() -> None:
    config = transformers.XLMRobertaConfig(is_decoder=True, position_embedding_type="relative_key",
                                           num_hidden_layers=1)  # fmt: skip
    with pytest.raises(HFConversionError) as info:
        spec_from_hf(config)
    assert {p.path for p in info.value.problems} == {"is_decoder", "position_embedding_type"}
    with pytest.raises(HFConversionError, match="XLMRobertaForMaskedLM"):
        spec_from_hf(transformers.XLMRobertaConfig(),
                     hf_class="XLMRobertaForSequenceClassification")
