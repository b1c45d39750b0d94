"""OPT both ways: pre-norm sizes, positions offset by 2 and counted from the attention mask,
and OPT-350m's layout (a narrower token table projected in and out, post-norm blocks)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

from txblocks.hf import HFConversionError, from_hf, spec_from_hf

from .conftest import DECODER_IDS, decoder_greedy, decoder_parity, decoder_round_trip, perturbed
from .conftest import padded_batch, scaled

QK = ("q_proj", "k_proj")


def opt(cls: str, **kw: Any) -> Callable[[], Any]:
    base = {"num_hidden_layers": 3, "hidden_size": 48, "num_attention_heads": 6, "ffn_dim": 40,
            "vocab_size": 97, "max_position_embeddings": 40, "init_std": 0.2,
            **DECODER_IDS}  # fmt: skip
    config = transformers.OPTConfig(**{**base, **kw})
    return lambda: scaled(getattr(transformers, cls)(config), QK)


CASES = {
    "lm-tied": opt("OPTForCausalLM"),
    "lm-untied-no-bias-no-affine-gelu": opt(
        "OPTForCausalLM", tie_word_embeddings=False, enable_bias=False,
        layer_norm_elementwise_affine=False, activation_function="gelu"),
    "base-no-final-norm": opt("OPTModel", _remove_final_layer_norm=True),
    # OPT-350m: a 16-wide token table, project_in / project_out, post-norm blocks
    "350m-lm": opt("OPTForCausalLM", word_embed_proj_dim=16, do_layer_norm_before=False),
    "350m-lm-untied": opt("OPTForCausalLM", word_embed_proj_dim=16, do_layer_norm_before=False,
                          tie_word_embeddings=False),
    "350m-base": opt("OPTModel", word_embed_proj_dim=16, do_layer_norm_before=False),
    "projected-pre-norm-lm": opt("OPTForCausalLM", word_embed_proj_dim=64),
}  # fmt: skip


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("case", list(CASES))
def test_same_numbers(case: str, side: str) -> None:
    decoder_parity(perturbed(CASES[case]), side, positions_from_mask=True)


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip(case: str) -> None:
    decoder_round_trip(perturbed(CASES[case]))


@pytest.mark.parametrize("kw", [{}, {"word_embed_proj_dim": 16, "do_layer_norm_before": False,
                                      "init_std": 0.5}], ids=["pre-norm", "350m"])
def test_greedy_decoding(kw: dict[str, Any]) -> None:
    decoder_greedy(perturbed(opt("OPTForCausalLM", num_hidden_layers=2, tie_word_embeddings=False,
                                 **kw)))  # fmt: skip


def test_spec() -> None:
    spec = spec_from_hf(perturbed(CASES["base-no-final-norm"]))
    assert (spec.position.offset, spec.max_seq_len, spec.use_final_norm) == (2, 40, False)
    norm = spec_from_hf(perturbed(CASES["lm-untied-no-bias-no-affine-gelu"])).block.norm
    assert (norm.affine, norm.bias) == (False, False)


def test_opt_350m_spec_and_weights() -> None:
    hf = perturbed(CASES["350m-lm"])
    spec = spec_from_hf(hf)
    embedding = spec.embedding
    assert (embedding.width, embedding.project_at, embedding.project_bias,
            embedding.project_out) == (16, "tokens", False, True)  # fmt: skip
    assert (spec.block.layout, spec.use_final_norm, spec.head.tie_embeddings) == (
        "post_norm", False, True)  # fmt: skip
    model = from_hf(hf)
    assert torch.equal(model.embeddings.project.weight, hf.model.decoder.project_in.weight)
    assert torch.equal(model.project_out.weight, hf.model.decoder.project_out.weight)
    assert model.head.proj.weight is model.embeddings.tokens.weight  # 16 wide, tied
    x = padded_batch("right")
    with torch.no_grad():
        out = model(x["input_ids"], x["attention_mask"])
    assert out.last_hidden_state.shape[-1] == 16  # OPTModel's output is projected out too


def test_layerdrop_is_refused() -> None:
    config = transformers.OPTConfig(word_embed_proj_dim=32, do_layer_norm_before=False,
                                    layerdrop=0.1)  # fmt: skip
    with pytest.raises(HFConversionError) as info:
        spec_from_hf(config, hf_class="OPTForCausalLM")
    assert [p.path for p in info.value.problems] == ["layerdrop"]
