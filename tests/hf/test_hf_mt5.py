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

transformers = pytest.importorskip("transformers")

from txblocks.hf import HFConversionError, from_hf, spec_from_hf
from txblocks.hf.family import ConfigView
from txblocks.hf.t5 import T5

from .conftest import TINY_T5, seq2seq_greedy, t5_checks, tiny_t5


def mt5(cls: str, *, untie: bool = False, **kw: Any) -> Callable[[], Any]:
    return tiny_t5("MT5Config", cls, {**TINY_T5, **kw}, untie=untie)


CASES = {
    "lm-tied-gated-gelu": mt5("MT5ForConditionalGeneration"),
    "lm-untied": mt5("MT5ForConditionalGeneration", untie=True),
    "base-relu": mt5("MT5Model", feed_forward_proj="relu"),
    "encoder": mt5("MT5EncoderModel"),
}


test_same_numbers_both_ways = t5_checks(CASES)


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
