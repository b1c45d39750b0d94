"""T5 and BART: encoder–decoders with the same numbers as Hugging Face, both ways.

Tiny random models at odd sizes (d_model 48, 6 heads, T5's d_kv 10 ≠ 48 / 6, 2 encoder
and 3 decoder layers), every parameter and buffer perturbed, a right-padded source batch
and a right-padded target batch, fp32, eval mode. Compared on real positions: the
encoder output, the decoder's last hidden state and the logits within 1e-4; then
``to_hf(from_hf(m))``: same class, same weights (tied as in ``m``), same logits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

import txblocks
from txblocks.hf import from_hf, spec_from_hf, to_hf

TOL = 1e-4
VOCAB, S, T = 97, 11, 9


def perturbed(model: Any, seed: int = 0) -> Any:
    """Every parameter and persistent buffer (BART's final_logits_bias) moved off its init."""
    torch.manual_seed(seed)
    params = {id(p) for p in model.parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        for tensor in model.state_dict(keep_vars=True).values():
            if id(tensor) not in params and tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor) * 0.1)
    return model.eval()


def untied(model: Any) -> Any:
    """The LM head given its own weight, as ``from_pretrained`` leaves T5 v1.1 / Flan-T5."""
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    model.all_tied_weights_keys.pop("lm_head.weight")
    return model


def t5(cls: str, *, untie: bool = False, **kw: Any) -> Callable[[], Any]:
    base = {"d_model": 48, "d_kv": 10, "num_heads": 6, "num_layers": 2,
            "num_decoder_layers": 3, "d_ff": 40, "vocab_size": VOCAB,
            "relative_attention_num_buckets": 8, "relative_attention_max_distance": 12,
            "pad_token_id": 1, "eos_token_id": 2, "decoder_start_token_id": 0}  # fmt: skip

    def make() -> Any:
        model = getattr(transformers, cls)(transformers.T5Config(**{**base, **kw}))
        return untied(model) if untie else model

    return make


def bart(cls: str, **kw: Any) -> Callable[[], Any]:
    base = {"d_model": 48, "encoder_attention_heads": 6, "decoder_attention_heads": 6,
            "encoder_layers": 2, "decoder_layers": 3, "encoder_ffn_dim": 40,
            "decoder_ffn_dim": 40, "vocab_size": VOCAB, "max_position_embeddings": 30,
            "init_std": 0.1, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
            "decoder_start_token_id": 2, "forced_eos_token_id": None}  # fmt: skip
    return lambda: getattr(transformers, cls)(transformers.BartConfig(**{**base, **kw}))


CASES: dict[str, Callable[[], Any]] = {
    # the original T5: ReLU MLP, LM head tied to the shared embeddings and scaled by d^-0.5
    "t5-lm-relu-tied": t5("T5ForConditionalGeneration"),
    # T5 v1.1 config: gated GELU (tanh), no head scale; transformers 5 still ties lm_head
    "t5-lm-gated-gelu-unscaled": t5("T5ForConditionalGeneration", feed_forward_proj="gated-gelu",
                                    tie_word_embeddings=False),
    # ... and as from_pretrained loads a v1.1 / Flan-T5 checkpoint: lm_head untied
    "t5-lm-v1.1-untied": t5("T5ForConditionalGeneration", untie=True,
                            feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    "t5-base-gated-silu": t5("T5Model", feed_forward_proj="gated-silu"),
    "t5-encoder": t5("T5EncoderModel"),
    "bart-lm-scaled": bart("BartForConditionalGeneration", scale_embedding=True,
                           decoder_ffn_dim=56, activation_function="gelu_new"),
    "bart-lm": bart("BartForConditionalGeneration"),
    "bart-base-untied": bart("BartModel", tie_word_embeddings=False, activation_function="relu"),
}  # fmt: skip


def inputs() -> dict[str, torch.Tensor]:
    """Sources (lengths 11, 6, 2) and targets (lengths 9, 9, 5), both right-padded."""
    g = torch.Generator().manual_seed(1)
    src = torch.randint(3, VOCAB, (3, S), generator=g)
    src_mask = torch.ones_like(src)
    src_mask[1, 6:] = 0
    src_mask[2, 2:] = 0
    tgt = torch.randint(3, VOCAB, (3, T), generator=g)
    tgt_mask = torch.ones_like(tgt)
    tgt_mask[2, 5:] = 0
    return {"input_ids": src.masked_fill(src_mask == 0, 1), "attention_mask": src_mask,
            "decoder_input_ids": tgt.masked_fill(tgt_mask == 0, 1),
            "decoder_attention_mask": tgt_mask}  # fmt: skip


Outputs = dict[str, "torch.Tensor | None"]


def hf_outputs(model: Any, x: dict[str, torch.Tensor]) -> Outputs:
    with torch.no_grad():
        encoder = model.get_encoder()(input_ids=x["input_ids"], attention_mask=x["attention_mask"])
        out: Outputs = {"encoder": encoder.last_hidden_state, "decoder": None, "logits": None}
        if isinstance(model, transformers.T5EncoderModel):
            return out
        decoder = model.get_decoder()(
            input_ids=x["decoder_input_ids"], attention_mask=x["decoder_attention_mask"],
            encoder_hidden_states=encoder.last_hidden_state,
            encoder_attention_mask=x["attention_mask"],
        )  # fmt: skip
        out["decoder"] = decoder.last_hidden_state
        if hasattr(model, "lm_head"):
            out["logits"] = model(**x).logits
    return out


def tx_outputs(model: Any, x: dict[str, torch.Tensor]) -> Outputs:
    with torch.no_grad():
        if model.spec.arch == "encoder":
            hidden = model(x["input_ids"], x["attention_mask"]).last_hidden_state
            return {"encoder": hidden, "decoder": None, "logits": None}
        out = model(x["input_ids"], x["attention_mask"], decoder_input_ids=x["decoder_input_ids"],
                    decoder_attention_mask=x["decoder_attention_mask"])  # fmt: skip
    return {"encoder": out.encoder_last_hidden_state, "decoder": out.last_hidden_state,
            "logits": out.logits}  # fmt: skip


def diffs(a: Outputs, b: Outputs, x: dict[str, torch.Tensor]) -> dict[str, float]:
    masks = {"encoder": x["attention_mask"], "decoder": x["decoder_attention_mask"],
             "logits": x["decoder_attention_mask"]}  # fmt: skip
    out = {}
    for key, mask in masks.items():
        assert (a[key] is None) == (b[key] is None), key
        if a[key] is not None:
            keep = mask.bool()
            out[key] = (a[key][keep] - b[key][keep]).abs().max().item()  # type: ignore[index]
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_from_hf_same_numbers(case: str) -> None:
    hf = perturbed(CASES[case]())
    model = from_hf(hf)
    assert not model.training
    x = inputs()
    expected, got = hf_outputs(hf, x), tx_outputs(model, x)
    assert expected["encoder"].abs().max() > 0.1  # type: ignore[union-attr]
    found = diffs(expected, got, x)
    assert found and max(found.values()) <= TOL, found


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_same_class_weights_and_logits(case: str) -> None:
    hf = perturbed(CASES[case]())
    model = from_hf(hf)
    back = to_hf(model)
    assert type(back) is type(hf) and not back.training
    assert back.config.decoder_start_token_id == hf.config.decoder_start_token_id  # carried
    source = hf.state_dict()
    for name, tensor in back.state_dict().items():
        if name == "shared.weight" and case == "bart-base-untied":  # unused, gets the encoder's
            continue
        torch.testing.assert_close(tensor, source[name], rtol=0, atol=0, msg=name)
    if hasattr(hf, "lm_head"):
        tied = hf.lm_head.weight is hf.get_input_embeddings().weight
        assert (back.lm_head.weight is back.get_input_embeddings().weight) == tied
    assert spec_from_hf(back).model_dump(exclude={"name"}) == model.spec.model_dump(
        exclude={"name"}
    )
    x = inputs()
    found = diffs(hf_outputs(hf, x), hf_outputs(back, x), x)
    assert max(found.values()) <= TOL, found


def test_t5_spec() -> None:
    spec = spec_from_hf(CASES["t5-lm-relu-tied"]())
    assert (spec.arch, spec.n_layers, spec.head_size) == ("seq2seq", 2, 10)
    assert spec.stacks == {"encoder": 2, "decoder": 3}
    assert (spec.position.type, spec.position.num_buckets, spec.position.max_distance) == (
        "relative_bias", 8, 12)  # fmt: skip
    attention = spec.block.attention
    assert (attention.scale, attention.bias, spec.block.norm.type) == (1.0, False, "rmsnorm")
    assert (spec.block.ffn.type, spec.block.ffn.activation.type) == ("mlp", "relu")
    assert (spec.head.tie_embeddings, spec.head.scale) == (True, "rsqrt_d_model")
    v11 = spec_from_hf(CASES["t5-lm-v1.1-untied"]())
    assert (v11.block.ffn.type, v11.block.ffn.activation.type) == ("glu", "gelu_tanh")
    assert (v11.head.tie_embeddings, v11.head.scale) == (False, None)


def test_t5_relative_bias_per_stack() -> None:
    hf = perturbed(CASES["t5-lm-relu-tied"]())
    model = from_hf(hf)
    for stack in ("encoder", "decoder"):
        table = getattr(hf, stack).block[0].layer[0].SelfAttention.relative_attention_bias.weight
        assert torch.equal(getattr(model, stack).position.relative_attention_bias.weight, table)
    assert model.encoder.embeddings.tokens is model.decoder.embeddings.tokens


def test_bart_spec() -> None:
    spec = spec_from_hf(CASES["bart-lm-scaled"]())
    assert (spec.block.layout, spec.position.type, spec.position.offset) == (
        "post_norm", "learned", 2)  # fmt: skip
    assert (spec.embedding.scale, spec.embedding.norm.type, spec.use_final_norm) == (
        "sqrt_d_model", "layernorm", False)  # fmt: skip
    assert (spec.head.bias, spec.head.tie_embeddings) == (True, True)
    assert [spec.block_for(0, s).ffn.hidden for s in ("encoder", "decoder")] == [40, 56]
    untied = spec_from_hf(CASES["bart-base-untied"]())
    assert (untied.shared_embeddings, untied.head) == (False, None)


def test_bart_final_logits_bias_is_the_head_bias() -> None:
    hf = perturbed(CASES["bart-lm"]())
    model = from_hf(hf)
    assert hf.final_logits_bias.abs().max() > 0
    assert torch.equal(model.head.proj.bias, hf.final_logits_bias[0])
    assert model.head.proj.weight is model.encoder.embeddings.tokens.weight


def test_a_wrong_cross_attention_weight_is_caught() -> None:
    hf = perturbed(CASES["bart-lm"]())
    model = from_hf(hf)
    with torch.no_grad():
        model.decoder.blocks[2].cross_attention.v.bias[3] += 1e-2
    x = inputs()
    found = diffs(hf_outputs(hf, x), tx_outputs(model, x), x)
    assert found["encoder"] <= TOL and found["logits"] > TOL


PRESET = {"n_layers": 2, "d_model": 48, "n_heads": 6, "vocab_size": 50}


@pytest.mark.parametrize(
    ("preset", "changes", "hf_class"),
    [
        ("bart-base", {"max_seq_len": 30, "block": {"ffn": {"hidden": 40}}},
         "BartForConditionalGeneration"),
        ("t5-small", {"head_dim": 10, "block": {"ffn": {"hidden": 40}}},
         "T5ForConditionalGeneration"),
        # HF's T5 applies its one dropout_rate to the attention weights too
        ("t5-small", {"head_dim": 10, "embedding": {"dropout": 0.0},
                      "block": {"dropout": 0.0, "attention": {"dropout": 0.0},
                                "ffn": {"type": "glu", "hidden": 40, "activation": "gelu_tanh",
                                        "dropout": 0.0}},
                      "head": {"tie_embeddings": False, "scale": None}},
         "T5ForConditionalGeneration"),
    ],
    ids=["bart-base", "t5-small", "t5-v1.1-like-untied"],
)  # fmt: skip
def test_presets_go_to_their_family(preset: str, changes: dict[str, Any], hf_class: str) -> None:
    torch.manual_seed(0)
    model = txblocks.build({"extends": preset, **PRESET, **changes}).eval()
    hf = to_hf(model)
    assert type(hf).__name__ == hf_class
    x = inputs()
    x = {k: v.clamp(max=49) for k, v in x.items()}
    found = diffs(hf_outputs(hf, x), tx_outputs(model, x), x)
    assert max(found.values()) <= TOL, found


def test_t5_config_alone_follows_the_checkpoints() -> None:
    """From a config, T5 v1.1's head is untied and unscaled (as its checkpoints load)."""
    v11 = transformers.T5Config(feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    head = spec_from_hf(v11, hf_class="T5ForConditionalGeneration").head
    assert (head.tie_embeddings, head.scale) == (False, None)
    head = spec_from_hf(transformers.T5Config(), hf_class="T5ForConditionalGeneration").head
    assert (head.tie_embeddings, head.scale) == (True, "rsqrt_d_model")
    encoder = spec_from_hf(v11, hf_class="T5EncoderModel")
    assert (encoder.arch, encoder.head) == ("encoder", None)
