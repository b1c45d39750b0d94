"""Same numbers as Hugging Face: tiny random transformers models, converted both ways.

Every family at odd sizes (d_model 48, 6 heads, GQA 6/2 where the family has it), every
parameter perturbed (so that biases and norms are not 0 / 1), a batch with padding, fp32,
eval mode. Compared on real (non-padding) positions: last hidden state and logits within
1e-4, then ``to_hf(from_hf(m))`` against ``m``: same class, same weights, same logits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

from txblocks.hf import from_hf, spec_from_hf, to_hf

from .conftest import perturbed

TOL = 1e-4
VOCAB, T = 97, 12
SMALL = {"bos_token_id": 0, "eos_token_id": 0}


def gpt2(cls: str, **kw: Any) -> Callable[[], Any]:
    base = {"n_layer": 3, "n_embd": 48, "n_head": 6, "vocab_size": VOCAB, "n_positions": 40,
            "initializer_range": 0.1, **SMALL}  # fmt: skip
    return lambda: getattr(transformers, cls)(transformers.GPT2Config(**{**base, **kw}))


def bert(cls: str, family: str = "Bert", **kw: Any) -> Callable[[], Any]:
    base = {"num_hidden_layers": 2, "hidden_size": 48, "num_attention_heads": 6,
            "vocab_size": VOCAB, "intermediate_size": 72, "max_position_embeddings": 40,
            "type_vocab_size": 3, "initializer_range": 0.1, "num_labels": 5,
            "pad_token_id": 1}  # fmt: skip
    config = getattr(transformers, f"{family}Config")
    return lambda: getattr(transformers, cls)(config(**{**base, **kw}))


def decoder(family: str, cls: str, **kw: Any) -> Callable[[], Any]:
    base = {"num_hidden_layers": 3, "hidden_size": 48, "num_attention_heads": 6,
            "num_key_value_heads": 2, "vocab_size": VOCAB, "intermediate_size": 72,
            "max_position_embeddings": 64, "initializer_range": 0.1, "rms_norm_eps": 1e-5,
            **SMALL}  # fmt: skip
    config = getattr(transformers, f"{family}Config")
    return lambda: getattr(transformers, cls)(config(**{**base, **kw}))


LINEAR = {"rope_type": "linear", "rope_theta": 500.0, "factor": 2.0}
LLAMA3 = {"rope_type": "llama3", "rope_theta": 500.0, "factor": 4.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 8}  # fmt: skip
DYNAMIC = {"rope_type": "dynamic", "rope_theta": 500.0, "factor": 3.0}

# id -> (factory, is_encoder)
CASES: dict[str, tuple[Callable[[], Any], bool]] = {
    "gpt2-lm": (gpt2("GPT2LMHeadModel"), False),
    "gpt2-base": (gpt2("GPT2Model", activation_function="relu"), False),
    "gpt2-layer-scaled-untied": (
        gpt2("GPT2LMHeadModel", scale_attn_by_inverse_layer_idx=True, tie_word_embeddings=False,
             n_inner=40, activation_function="gelu"), False),
    "gpt2-unscaled": (
        gpt2("GPT2LMHeadModel", scale_attn_weights=False, initializer_range=0.03), False),
    "bert-mlm": (bert("BertForMaskedLM"), True),
    "bert-mlm-untied-gelu-new": (
        bert("BertForMaskedLM", tie_word_embeddings=False, hidden_act="gelu_new"), True),
    "bert-base-with-pooler": (bert("BertModel"), True),
    "bert-seq-cls": (bert("BertForSequenceClassification", classifier_dropout=0.3), True),
    "bert-token-cls": (bert("BertForTokenClassification"), True),
    "roberta-mlm": (bert("RobertaForMaskedLM", "Roberta"), True),
    "roberta-base": (bert("RobertaModel", "Roberta"), True),
    "roberta-token-cls": (bert("RobertaForTokenClassification", "Roberta"), True),
    "llama-lm-linear-rope": (decoder("Llama", "LlamaForCausalLM", rope_parameters=LINEAR), False),
    "llama-lm-llama3-bias-tied": (
        decoder("Llama", "LlamaForCausalLM", rope_parameters=LLAMA3, attention_bias=True,
                mlp_bias=True, tie_word_embeddings=True), False),
    # max_position_embeddings 8 < T: the dynamic NTK base grows; head_dim 10 != 48 / 6
    "llama-base-dynamic": (
        decoder("Llama", "LlamaModel", rope_parameters=DYNAMIC, max_position_embeddings=8,
                head_dim=10), False),
    "mistral-lm-window4": (decoder("Mistral", "MistralForCausalLM", sliding_window=4), False),
    "mistral-base-no-window": (decoder("Mistral", "MistralModel", sliding_window=None), False),
    "qwen2-lm-mixed-windows": (
        decoder("Qwen2", "Qwen2ForCausalLM", use_sliding_window=True, sliding_window=3,
                max_window_layers=1), False),
    "qwen2-lm-tied": (decoder("Qwen2", "Qwen2ForCausalLM", tie_word_embeddings=True), False),
}  # fmt: skip


def batch(encoder: bool, side: str, pad_id: int = 1) -> dict[str, torch.Tensor]:
    """Three rows of T tokens, two padded (lengths 12, 7, 3), on the right or left."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, VOCAB, (3, T), generator=g)
    mask = torch.ones_like(ids)
    for row, length in ((1, 7), (2, 3)):
        if side == "right":
            mask[row, length:] = 0
        else:
            mask[row, : T - length] = 0
    ids = ids.masked_fill(mask == 0, pad_id)
    out = {"input_ids": ids, "attention_mask": mask}
    if encoder:
        out["token_type_ids"] = torch.randint(0, 3, (3, T), generator=g)
    return out


Outputs = tuple[torch.Tensor, "torch.Tensor | None"]


def hf_outputs(model: Any, inputs: dict[str, torch.Tensor]) -> Outputs:
    with torch.no_grad():
        hidden = model.base_model(**inputs).last_hidden_state
        logits = getattr(model(**inputs), "logits", None) if model.base_model is not model else None
    return hidden, logits


def tx_outputs(model: Any, inputs: dict[str, torch.Tensor]) -> Outputs:
    kwargs = {"token_type_ids": inputs["token_type_ids"]} if "token_type_ids" in inputs else {}
    with torch.no_grad():
        out = model(inputs["input_ids"], attention_mask=inputs["attention_mask"], **kwargs)
    return out.last_hidden_state, out.logits


def max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    if a.dim() == 2 and a.shape[:2] != mask.shape:  # (B, K): sequence classification
        return (a - b).abs().max().item()
    keep = mask.bool()
    return (a[keep] - b[keep]).abs().max().item()


def sides(encoder: bool) -> list[str]:
    return ["right"] if encoder else ["right", "left"]


PARAMS = [
    pytest.param(case, side, id=f"{case}-{side}")
    for case, (_, encoder) in CASES.items()
    for side in sides(encoder)
]


@pytest.mark.parametrize(("case", "side"), PARAMS)
def test_from_hf_same_numbers(case: str, side: str) -> None:
    factory, encoder = CASES[case]
    hf = perturbed(factory)
    model = from_hf(hf)
    assert not model.training and model.spec is not None
    inputs = batch(encoder, side, pad_id=hf.config.pad_token_id or 1)
    (h_hf, y_hf), (h_tx, y_tx) = hf_outputs(hf, inputs), tx_outputs(model, inputs)
    mask = inputs["attention_mask"]
    assert h_hf.abs().max() > 0.1  # not a degenerate model
    assert max_diff(h_hf, h_tx, mask) <= TOL
    assert (y_hf is None) == (y_tx is None)
    if y_hf is not None:
        assert max_diff(y_hf, y_tx, mask) <= TOL


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_same_class_weights_and_logits(case: str) -> None:
    factory, encoder = CASES[case]
    hf = perturbed(factory)
    model = from_hf(hf)
    back = to_hf(model)
    assert type(back) is type(hf)
    assert not back.training
    source = hf.state_dict()
    # An untied MLM head's own `bias` is never read (its decoder.bias is); it comes back
    # equal to decoder.bias.
    tied = hf.config.tie_word_embeddings
    unread = set() if tied else {"cls.predictions.bias", "lm_head.bias"}
    for name, tensor in back.state_dict().items():  # BertModel comes back without its pooler
        if name in unread:
            continue
        torch.testing.assert_close(tensor, source[name], rtol=0, atol=0, msg=name)
    assert spec_from_hf(back).model_dump(exclude={"name"}) == model.spec.model_dump(
        exclude={"name"}
    )
    inputs = batch(encoder, "right", pad_id=hf.config.pad_token_id or 1)
    (h1, y1), (h2, y2) = hf_outputs(hf, inputs), hf_outputs(back, inputs)
    assert max_diff(h1, h2, inputs["attention_mask"]) <= TOL
    if y1 is not None:
        assert max_diff(y1, y2, inputs["attention_mask"]) <= TOL


def test_a_wrong_weight_is_caught() -> None:
    """The tolerance is meaningful: a 1e-2 change in one bias breaks parity."""
    factory, _ = CASES["qwen2-lm-tied"]
    hf = perturbed(factory)
    model = from_hf(hf)
    with torch.no_grad():
        model.blocks[1].attention.qkv.bias[3] += 1e-2
    inputs = batch(False, "right")
    (_, y_hf), (_, y_tx) = hf_outputs(hf, inputs), tx_outputs(model, inputs)
    assert max_diff(y_hf, y_tx, inputs["attention_mask"]) > TOL


def test_sliding_window_matters() -> None:
    """Mistral's window (4 < T) changes the numbers, so the parity above checks its semantics."""
    factory, _ = CASES["mistral-lm-window4"]
    hf = perturbed(factory)
    model = from_hf(hf)
    assert model.spec.block.attention.mask.window == 4
    hf.config.sliding_window = None  # the same weights under a plain causal mask
    hf_full = transformers.MistralForCausalLM(hf.config).eval()
    hf_full.load_state_dict(hf.state_dict())
    inputs = batch(False, "right")
    (_, y_full), (_, y_tx) = hf_outputs(hf_full, inputs), tx_outputs(model, inputs)
    assert max_diff(y_full, y_tx, inputs["attention_mask"]) > TOL


def test_qwen2_windows_become_layer_overrides() -> None:
    spec = spec_from_hf(perturbed(CASES["qwen2-lm-mixed-windows"][0]))
    masks = [spec.block_for(i).attention.mask for i in range(spec.n_layers)]
    assert [getattr(m, "window", None) for m in masks] == [None, 3, 3]
    attention = spec.block.attention
    assert (attention.qkv_bias, attention.out_bias) == (True, False)


def test_roberta_positions_start_after_padding_index() -> None:
    spec = spec_from_hf(perturbed(CASES["roberta-mlm"][0]))
    assert (spec.position.offset, spec.max_seq_len) == (2, 38)  # pad_token_id 1, 40 rows
