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
    both_ways, perturbed_all, scaled, seq2seq_batch, seq2seq_greedy, seq2seq_parity,
)  # fmt: skip

QK = (".q.", ".k.", "relative_attention_bias")


def switch(cls: str, **kw: Any) -> Callable[[], Any]:
    base = {"d_model": 48, "d_kv": 10, "num_heads": 6, "num_layers": 4, "num_decoder_layers": 3,
            "num_sparse_encoder_layers": 2, "num_sparse_decoder_layers": 3, "d_ff": 40,
            "num_experts": 3, "expert_capacity": 3, "vocab_size": 97,
            "relative_attention_num_buckets": 8, "relative_attention_max_distance": 12,
            "pad_token_id": 1, "eos_token_id": 2, "decoder_start_token_id": 0}  # fmt: skip
    config = transformers.SwitchTransformersConfig(**{**base, **kw})
    return lambda: scaled(perturbed_all(lambda: getattr(transformers, cls)(config)), QK, 1.5)


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
        model = from_hf(hf)
        with torch.no_grad():
            want = hf(x["input_ids"], attention_mask=x["attention_mask"]).last_hidden_state
            got = model(x["input_ids"], x["attention_mask"]).last_hidden_state
        keep = x["attention_mask"].bool()
        assert (want[keep] - got[keep]).abs().max() <= 1e-4
        assert _dropped(model) > 0  # the capacity matters
        both_ways(hf, {"input_ids": x["input_ids"], "attention_mask": x["attention_mask"]})
        return
    seq2seq_parity(hf)
    unread = () if hf.config.tie_word_embeddings else ("shared.weight",)  # unused when untied
    back = both_ways(hf, x, unread=unread)
    if hasattr(hf, "lm_head"):
        tied = hf.lm_head.weight is hf.get_input_embeddings().weight
        assert (back.lm_head.weight is back.get_input_embeddings().weight) == tied


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
