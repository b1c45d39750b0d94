"""Options a mapping cannot reproduce exactly raise one error that lists every one of them."""

from __future__ import annotations

import dataclasses

import pytest
import torch

transformers = pytest.importorskip("transformers")

from txblocks.hf import HFConversionError, HFHead, from_hf, spec_from_hf
from txblocks.hf.gpt2 import GPT2

TINY = {"bos_token_id": 0, "eos_token_id": 0, "vocab_size": 32}


def problems_of(config, **kwargs) -> dict[str, str]:
    with pytest.raises(HFConversionError) as info:
        spec_from_hf(config, **kwargs)
    return {p.path: p.message for p in info.value.problems}


def test_gpt2_lists_every_unsupported_option() -> None:
    config = transformers.GPT2Config(
        reorder_and_upcast_attn=True, add_cross_attention=True, activation_function="mish", **TINY
    )
    found = problems_of(config)
    assert set(found) == {"reorder_and_upcast_attn", "add_cross_attention", "activation_function"}
    assert "'mish'" in found["activation_function"] and "gelu_new" in found["activation_function"]


def test_gpt2_layer_scaling_is_supported() -> None:
    config = transformers.GPT2Config(scale_attn_by_inverse_layer_idx=True, n_layer=3, **TINY)
    spec = spec_from_hf(config)
    scales = [spec.block_for(i).attention.scale for i in range(3)]
    assert scales == pytest.approx([64**-0.5, 64**-0.5 / 2, 64**-0.5 / 3])


def test_from_hf_refuses_the_model_not_just_the_config() -> None:
    config = transformers.GPT2Config(
        n_layer=1, n_embd=12, n_head=2, reorder_and_upcast_attn=True, **TINY
    )
    expected = r"(?s)GPT2LMHeadModel.*reorder_and_upcast_attn: True"
    with pytest.raises(HFConversionError, match=expected):
        from_hf(transformers.GPT2LMHeadModel(config))


def test_bert_lists_every_unsupported_option_once() -> None:
    config = transformers.BertConfig(
        position_embedding_type="relative_key", is_decoder=True, hidden_act="gelu_accurate"
    )
    with pytest.raises(HFConversionError) as info:
        spec_from_hf(config, hf_class="BertForMaskedLM")  # hidden_act is read by body and head
    paths = [p.path for p in info.value.problems]
    assert sorted(paths) == ["hidden_act", "is_decoder", "position_embedding_type"]
    assert "relative_key" in str(info.value)


def test_bert_absolute_positions_from_old_configs_are_fine() -> None:
    spec = spec_from_hf(transformers.BertConfig(position_embedding_type="absolute"))
    assert spec.position.type == "learned"


def test_llama_rope_and_activation() -> None:
    config = transformers.LlamaConfig(
        rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0,
                         "original_max_position_embeddings": 16},
        hidden_act="relu2", pretraining_tp=4,  # pretraining_tp does not change the numbers
    )  # fmt: skip
    found = problems_of(config)
    assert set(found) == {"rope_parameters", "hidden_act"}
    assert "rope_type 'yarn'" in found["rope_parameters"]


def test_llama_partial_rotary_and_unknown_rope_keys() -> None:
    config = transformers.LlamaConfig(rope_parameters={
        "rope_type": "linear", "rope_theta": 1e4, "factor": 4.0, "partial_rotary_factor": 0.5,
    })  # fmt: skip
    found = problems_of(config)
    assert "partial_rotary_factor" in found["rope_parameters"]


def test_llama_biases_are_supported() -> None:
    spec = spec_from_hf(transformers.LlamaConfig(attention_bias=True, mlp_bias=True))
    attention = spec.block.attention
    assert (attention.qkv_bias, attention.out_bias, spec.block.ffn.bias) == (True, True, True)


def test_qwen2_unknown_layer_type() -> None:
    layer_types = ["full_attention", "chunked_attention"]
    config = transformers.Qwen2Config(num_hidden_layers=2, layer_types=layer_types)
    assert "chunked_attention" in problems_of(config)["layer_types"]


def test_unknown_family_and_unknown_class() -> None:
    found = problems_of(transformers.BloomConfig())  # a family nobody converts (yet)
    assert "bloom" in found["model_type"] and "llama" in found["model_type"]
    found = problems_of(transformers.GPT2Config(**TINY), hf_class="GPT2DoubleHeadsModel")
    assert "GPT2LMHeadModel" in found["class"]
    found = problems_of(transformers.RobertaConfig(), hf_class="RobertaForSequenceClassification")
    assert "RobertaForMaskedLM" in found["class"]


def test_an_option_the_mapping_never_reads_is_reported(registry) -> None:
    """A family that does not read an option which differs from the class default refuses it.

    (A plugin family registered under ``hf_family``: the built-ins mark GPT-2's
    ``summary_*`` options as irrelevant, this copy does not.)
    """

    class ToyConfig(transformers.GPT2Config):
        model_type = "toy_gpt2"

    class ToyModel(transformers.GPT2Model):
        config_class = ToyConfig

    toy = dataclasses.replace(
        GPT2, name="toy_gpt2", model_type="toy_gpt2", ignored={}, heads=(HFHead("ToyModel", None),)
    )
    registry.add("hf_family", "toy_gpt2", toy)
    found = problems_of(ToyConfig(summary_type="last", **TINY), registry=registry)
    assert set(found) == {"summary_type"}
    assert "default 'cls_index'" in found["summary_type"]
    # ... and with default options the plugin family converts like a built-in
    hf = ToyModel(ToyConfig(n_layer=1, n_embd=12, n_head=2, **TINY)).eval()
    model = from_hf(hf, registry=registry)
    ids = torch.randint(0, 32, (2, 5))
    with torch.no_grad():
        diff = model(ids).last_hidden_state - hf(ids).last_hidden_state
    assert diff.abs().max() <= 1e-4


def test_t5_feed_forward_activation() -> None:
    found = problems_of(transformers.T5Config(feed_forward_proj="mish"))
    assert set(found) == {"feed_forward_proj"}
    assert "'mish'" in found["feed_forward_proj"] and "gelu_new" in found["feed_forward_proj"]
    found = problems_of(transformers.T5Config(feed_forward_proj="gated-relu6"))
    assert "'relu6'" in found["feed_forward_proj"]
    spec = spec_from_hf(transformers.T5Config(feed_forward_proj="gated-silu"))
    assert (spec.block.ffn.type, spec.block.ffn.activation.type) == ("glu", "silu")


def test_bart_lists_every_unsupported_option() -> None:
    config = transformers.BartConfig(
        decoder_attention_heads=8, encoder_layerdrop=0.1, decoder_layerdrop=0.2,
        activation_function="relu2",
    )  # fmt: skip
    found = problems_of(config)
    assert set(found) == {"decoder_attention_heads", "encoder_layerdrop", "decoder_layerdrop",
                          "activation_function"}  # fmt: skip
    assert "one n_heads" in found["decoder_attention_heads"]
    assert "LayerDrop" in found["encoder_layerdrop"]


def test_bart_options_that_do_not_change_the_numbers() -> None:
    """Generation settings are fine; so are the fairseq options transformers 5 ignores."""
    config = transformers.BartConfig(forced_eos_token_id=5, normalize_before=True,
                                     add_bias_logits=True, add_final_layer_norm=True)  # fmt: skip
    spec = spec_from_hf(config)
    assert (spec.block.layout, spec.use_final_norm) == ("post_norm", False)


def test_mixtral_jitter_and_activation() -> None:
    found = problems_of(transformers.MixtralConfig(router_jitter_noise=0.1, hidden_act="relu2"))
    assert set(found) == {"router_jitter_noise", "hidden_act"}
    assert "router only" in found["router_jitter_noise"]


def test_vit_without_labels_and_classes() -> None:
    found = problems_of(transformers.ViTConfig(num_labels=0),
                        hf_class="ViTForImageClassification")  # fmt: skip
    assert set(found) == {"num_labels"}
    found = problems_of(transformers.ViTConfig(), hf_class="ViTForMaskedImageModeling")
    assert "ViTForImageClassification" in found["class"]
    spec = spec_from_hf(transformers.ViTConfig(qkv_bias=False))  # supported
    assert (spec.block.attention.qkv_bias, spec.block.attention.out_bias) == (False, True)


def test_t5_and_bart_classes_without_a_mapping() -> None:
    found = problems_of(transformers.T5Config(), hf_class="T5ForSequenceClassification")
    assert "T5ForConditionalGeneration" in found["class"]
    found = problems_of(transformers.BartConfig(), hf_class="BartForSequenceClassification")
    assert "BartForConditionalGeneration" in found["class"]
