"""``to_hf`` on models built from specs: the right family, or every reason why none fits."""

from __future__ import annotations

from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

import txblocks
from txblocks.hf import HFConversionError, from_hf, to_hf

LLAMA: dict[str, Any] = {
    "extends": "llama", "n_layers": 2, "d_model": 48, "n_heads": 6, "n_kv_heads": 2,
    "vocab_size": 50, "max_seq_len": 64, "block": {"ffn": {"hidden": 40}},
}  # fmt: skip


def built(changes: dict[str, Any]) -> torch.nn.Module:
    torch.manual_seed(0)
    return txblocks.build({**LLAMA, **changes}).eval()


def same_logits(model: torch.nn.Module, hf: torch.nn.Module) -> None:
    ids = torch.randint(0, 50, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids).logits, model(ids).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("changes", "hf_class"),
    [
        ({}, "LlamaForCausalLM"),
        ({"block": {"attention": {"mask": {"type": "sliding_window", "window": 4}}}},
         "MistralForCausalLM"),
        ({"block": {"attention": {"qkv_bias": True}}}, "Qwen2ForCausalLM"),
        ({"layers": [{"select": 1, "attention": {"mask": {"type": "sliding_window", "window": 3}}}],
          "block": {"attention": {"qkv_bias": True}}}, "Qwen2ForCausalLM"),
        ({"head": None}, "LlamaModel"),
    ],
    ids=["llama", "mistral", "qwen2", "qwen2-mixed-windows", "no-head"],
)  # fmt: skip
def test_the_first_family_that_fits(changes: dict[str, Any], hf_class: str) -> None:
    model = built(changes)
    hf = to_hf(model)
    assert type(hf).__name__ == hf_class
    if hf_class != "LlamaModel":
        same_logits(model, hf)


def test_to_hf_goes_back_to_the_source_family() -> None:
    """A Mistral without a window is also a Llama; it goes back to Mistral."""
    torch.manual_seed(0)
    config = transformers.MistralConfig(
        num_hidden_layers=2, hidden_size=48, num_attention_heads=6, num_key_value_heads=2,
        intermediate_size=40, vocab_size=50, sliding_window=None, bos_token_id=3, eos_token_id=4,
    )  # fmt: skip
    model = from_hf(transformers.MistralForCausalLM(config))
    back = to_hf(model)
    assert type(back).__name__ == "MistralForCausalLM"
    assert (back.config.bos_token_id, back.config.eos_token_id) == (3, 4)  # carried over
    assert type(to_hf(model, family="llama")).__name__ == "LlamaForCausalLM"


def test_every_family_says_why_not() -> None:
    model = built({"block": {"layout": "parallel"}})
    with pytest.raises(HFConversionError) as info:
        to_hf(model)
    paths = [p.path for p in info.value.problems]
    for family in ("llama", "mistral", "qwen2"):
        assert f"{family}: block.layout" in paths
    assert "bert: arch" in paths  # an encoder family, said in one line


def test_named_family_lists_each_difference() -> None:
    model = built({
        "block": {"layout": "parallel", "attention": {"qk_norm": "rmsnorm"}},
        "position": {"type": "rope", "fraction": 0.5},
        "layers": [{"select": 0, "dropout": 0.1}],
    })  # fmt: skip
    with pytest.raises(HFConversionError) as info:
        to_hf(model, family="llama")
    messages = {p.path: p.message for p in info.value.problems}
    assert set(messages) == {
        "llama: block.layout", "llama: block.attention.qk_norm", "llama: position.fraction",
        "llama: layer 0: dropout",
    }  # fmt: skip
    layout = messages["llama: block.layout"]
    assert "'parallel'" in layout and "'pre_norm'" in layout


def test_unknown_family_and_models_without_spec() -> None:
    with pytest.raises(HFConversionError, match="unknown family"):
        to_hf(built({}), family="gpt3")
    with pytest.raises(HFConversionError, match="no .spec"):
        to_hf(torch.nn.Linear(2, 2))


def test_encoder_specs_go_to_bert_or_roberta() -> None:
    bert = {"extends": "bert-base", "n_layers": 2, "d_model": 48, "n_heads": 6, "vocab_size": 50,
            "max_seq_len": 30, "block": {"ffn": {"hidden": 40}}}  # fmt: skip
    assert type(to_hf(txblocks.build(bert))).__name__ == "BertForMaskedLM"
    roberta = {**bert, "position": {"type": "learned", "offset": 2}}
    hf = to_hf(txblocks.build(roberta))
    assert type(hf).__name__ == "RobertaForMaskedLM"
    assert (hf.config.pad_token_id, hf.config.max_position_embeddings) == (1, 32)
