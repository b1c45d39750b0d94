"""Switch Transformers: T5 with top-1 expert layers and a per-sequence capacity, same
numbers as Hugging Face, both ways.

Tiny random models (d_model 48, d_kv 10, 4 encoder and 3 decoder layers, 3 experts, a
capacity of 3 tokens per expert and sequence, so that tokens are dropped), every parameter
perturbed, query / key weights and the relative bias scaled up, right-padded sources and
targets, fp32, eval mode: encoder output, decoder hidden states and logits within 1e-4 on
real positions, greedy generation token for token, ``to_hf(from_hf(m))`` equal to ``m``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

from txblocks.hf import HFConversionError, from_hf, spec_from_hf

from .conftest import (
    TINY_T5, encoder_both_ways, seq2seq_batch, seq2seq_both_ways, seq2seq_greedy, tiny_t5,
)  # fmt: skip

def switch(cls: str, **kw: Any) -> Callable[[], Any]:
    base = {**TINY_T5, "num_layers": 4, "num_sparse_encoder_layers": 2,
            "num_sparse_decoder_layers": 3, "num_experts": 3, "expert_capacity": 3}  # fmt: skip
    return tiny_t5("SwitchTransformersConfig", cls, {**base, **kw})


CASES = {
    "lm-tied-scaled": switch("SwitchTransformersForConditionalGeneration"),
    "lm-untied-router-bias": switch("SwitchTransformersForConditionalGeneration",
                                    tie_word_embeddings=False, router_bias=True,
                                    num_sparse_decoder_layers=1, dense_act_fn="gelu",
                                    initializer_factor=0.3),
    "base-every-layer-sparse": switch("SwitchTransformersModel", num_sparse_encoder_layers=4),
    "encoder": switch("SwitchTransformersEncoderModel"),
}  # fmt: skip


def _dropped(model: Any) -> int:
    return sum(m.last_stats.dropped for m in model.modules() if hasattr(m, "last_stats")
               and m.last_stats is not None)  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_same_numbers_both_ways(case: str) -> None:
    hf = CASES[case]()
    x = seq2seq_batch()
    if case == "encoder":
        model = encoder_both_ways(hf, x)
        assert _dropped(model) > 0  # the capacity matters
        return
    unread = () if hf.config.tie_word_embeddings else ("shared.weight",)  # unused when untied
    seq2seq_both_ways(hf, x, unread=unread)


def test_tokens_are_dropped_per_sequence() -> None:
    hf = CASES["lm-tied-scaled"]()
    model = from_hf(hf)
    x = seq2seq_batch()
    with torch.no_grad():
        model(x["input_ids"], x["attention_mask"], decoder_input_ids=x["decoder_input_ids"])
    moe = model.encoder.blocks[1].ffn
    assert (moe.capacity, moe.capacity_per, moe.batch_independent) == (3, "sequence", True)
    assert moe.last_stats.dropped > 0 and int(moe.last_stats.kept.max()) <= 3 * 3


def test_greedy_generation() -> None:
    hf = switch("SwitchTransformersForConditionalGeneration", tie_word_embeddings=False,
                num_layers=2, num_decoder_layers=2, num_sparse_encoder_layers=1,
                num_sparse_decoder_layers=1)()  # fmt: skip
    with torch.no_grad():
        hf.lm_head.weight.normal_(0, 0.3)
    seq2seq_greedy(hf)


def test_spec() -> None:
    spec = spec_from_hf(CASES["lm-untied-router-bias"]())
    sparse = {s: [i for i in range(n) if spec.block_for(i, s).ffn.type == "moe"]
              for s, n in spec.stacks.items()}  # fmt: skip
    assert sparse == {"encoder": [1, 3], "decoder": [1]}
    moe = spec.block_for(1, "decoder").ffn
    assert (moe.experts, moe.top_k, moe.normalize_top_k, moe.router_bias) == (3, 1, False, True)
    assert (moe.capacity, moe.capacity_per, moe.capacity_factor) == (3, "sequence", None)
    assert (spec.head.tie_embeddings, spec.head.scale) == (False, None)
    assert (spec.block.ffn.type, spec.block.ffn.activation.type) == ("mlp", "gelu")


def test_refused_options() -> None:
    config = transformers.SwitchTransformersConfig(router_dtype="bfloat16", dense_act_fn="mish",
                                                   num_layers=2, num_decoder_layers=2)  # fmt: skip
    with pytest.raises(HFConversionError) as info:
        spec_from_hf(config, hf_class="SwitchTransformersForConditionalGeneration")
    assert {p.path for p in info.value.problems} == {"router_dtype", "dense_act_fn"}
