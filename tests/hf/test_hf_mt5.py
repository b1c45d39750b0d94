"""mT5: T5's network whose LM head never scales, same numbers as Hugging Face, both ways.

Tiny random models (d_model 48, d_kv 10 ≠ 48 / 6, 2 encoder and 3 decoder layers), every
parameter perturbed, query and key weights scaled up, right-padded sources and targets,
fp32, eval mode: encoder output, decoder hidden states and logits within 1e-4 on real
positions, greedy generation token for token, ``to_hf(from_hf(m))`` equal to ``m``. T5's
head entry refuses an mT5 model instead of scaling its logits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

from txblocks.hf import HFConversionError, from_hf, spec_from_hf
from txblocks.hf.family import ConfigView
from txblocks.hf.t5 import T5

from .conftest import (
    both_ways, perturbed_all, scaled, seq2seq_batch, seq2seq_greedy, seq2seq_parity,
)  # fmt: skip

QK = (".q.", ".k.", "relative_attention_bias")


def untied(model: Any) -> Any:
    """The LM head given its own weight (as a checkpoint with its own lm_head loads), drawn
    large so that greedy decoding does not repeat one token."""
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight) * 0.3)
    model.all_tied_weights_keys.pop("lm_head.weight")
    return model


def mt5(cls: str, *, untie: bool = False, **kw: Any) -> Callable[[], Any]:
    base = {"d_model": 48, "d_kv": 10, "num_heads": 6, "num_layers": 2,
            "num_decoder_layers": 3, "d_ff": 40, "vocab_size": 97,
            "relative_attention_num_buckets": 8, "relative_attention_max_distance": 12,
            "pad_token_id": 1, "eos_token_id": 2, "decoder_start_token_id": 0}  # fmt: skip
    config = transformers.MT5Config(**{**base, **kw})

    def make() -> Any:
        model = getattr(transformers, cls)(config)
        return untied(model) if untie else model

    return lambda: scaled(perturbed_all(make), QK, 1.5)


CASES = {
    "lm-tied-gated-gelu": mt5("MT5ForConditionalGeneration"),
    "lm-untied": mt5("MT5ForConditionalGeneration", untie=True),
    "base-relu": mt5("MT5Model", feed_forward_proj="relu"),
    "encoder": mt5("MT5EncoderModel"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_same_numbers_both_ways(case: str) -> None:
    hf = CASES[case]()
    x = seq2seq_batch()
    if case == "encoder":
        model = from_hf(hf)
        with torch.no_grad():
            want = hf(x["input_ids"], attention_mask=x["attention_mask"]).last_hidden_state
            got = model(x["input_ids"], x["attention_mask"]).last_hidden_state
        keep = x["attention_mask"].bool()
        assert (want[keep] - got[keep]).abs().max() <= 1e-4
        both_ways(hf, {"input_ids": x["input_ids"], "attention_mask": x["attention_mask"]})
        return
    seq2seq_parity(hf)
    back = both_ways(hf, x)
    if hasattr(hf, "lm_head"):
        tied = hf.lm_head.weight is hf.get_input_embeddings().weight
        assert (back.lm_head.weight is back.get_input_embeddings().weight) == tied


def test_greedy_generation() -> None:
    # HF's generate sizes its cache by num_layers: the same depth on both sides here
    seq2seq_greedy(mt5("MT5ForConditionalGeneration", untie=True, num_decoder_layers=2)())


def test_head_never_scales() -> None:
    hf = CASES["lm-tied-gated-gelu"]()
    assert hf.config.tie_word_embeddings  # MT5Config forces it ...
    head = spec_from_hf(hf).head
    assert (head.tie_embeddings, head.scale) == (True, None)  # ... and the class never scales
    config_only = spec_from_hf(hf.config, hf_class="MT5ForConditionalGeneration").head
    assert (config_only.tie_embeddings, config_only.scale) == (True, None)
    assert spec_from_hf(hf.config, hf_class="MT5EncoderModel").arch == "encoder"


def test_t5_head_refuses_an_mt5_model() -> None:
    """A family that reuses T5's head for mT5 gets a clear error, not 8x larger logits."""
    hf = CASES["lm-tied-gated-gelu"]()
    t5_head = T5.head("T5ForConditionalGeneration")
    view = ConfigView(hf.config, hf)
    t5_head.spec(view)
    assert {p.path for p in view.problems} == {"model_type"}
    assert "txblocks.hf.t5.lm_head" in str(view.problems[0])


def test_a_scaled_head_is_not_an_mt5_head() -> None:
    """to_hf(family='mt5') refuses a T5-style spec whose head is scaled."""
    t5 = transformers.T5ForConditionalGeneration(transformers.T5Config(
        d_model=16, d_kv=4, num_heads=4, num_layers=1, d_ff=8, vocab_size=20,
        feed_forward_proj="gated-gelu"))  # fmt: skip
    model = from_hf(t5)
    assert model.spec.head.scale == "rsqrt_d_model"
    from txblocks.hf import to_hf

    with pytest.raises(HFConversionError, match="mt5: head.scale"):
        to_hf(model, family="mt5")
