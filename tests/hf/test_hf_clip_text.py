"""CLIP's text tower: a causal pre-norm encoder, same numbers as Hugging Face, both ways.

Tiny random models (d_model 48, 6 heads, 2 layers), every parameter perturbed, query and key
weights scaled up, a right-padded batch, fp32, eval mode: the last hidden state within 1e-4
on real positions, ``to_hf(from_hf(m))`` equal to ``m``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

from txblocks.hf import HFConversionError, from_hf, spec_from_hf

from .conftest import both_ways, encoder_parity, padded_batch, perturbed, scaled

QK = (".q_proj.", ".k_proj.")


def clip_text(cls: str = "CLIPTextModel", **kw: Any) -> Callable[[], Any]:
    base = {"hidden_size": 48, "num_attention_heads": 6, "num_hidden_layers": 2,
            "intermediate_size": 40, "vocab_size": 97, "max_position_embeddings": 20,
            "initializer_range": 0.1, "pad_token_id": 1, "bos_token_id": 0,
            "eos_token_id": 2}  # fmt: skip
    config = transformers.CLIPTextConfig(**{**base, **kw})
    return lambda: scaled(perturbed(lambda: getattr(transformers, cls)(config)), QK)


CASES = {
    "quick-gelu": clip_text(),
    "gelu-eps": clip_text(hidden_act="gelu", layer_norm_eps=1e-6),
}


@pytest.mark.parametrize("case", list(CASES))
def test_same_numbers_both_ways(case: str) -> None:
    hf = CASES[case]()
    encoder_parity(hf)
    both_ways(hf, padded_batch("right", 97))


def test_the_mask_is_causal() -> None:
    hf = CASES["quick-gelu"]()
    spec = spec_from_hf(hf)
    assert (spec.arch, spec.block.attention.mask.type, spec.block.layout) == (
        "encoder", "causal", "pre_norm")  # fmt: skip
    model = from_hf(hf)
    ids = padded_batch("right", 97)["input_ids"][:1]
    changed = ids.clone()
    changed[0, -1] = (changed[0, -1] + 1) % 97  # a later token does not reach earlier ones
    with torch.no_grad():
        a, b = model(ids).last_hidden_state, model(changed).last_hidden_state
    assert torch.equal(a[0, :-1], b[0, :-1]) and not torch.equal(a[0, -1], b[0, -1])


def test_projection_class_is_refused() -> None:
    with pytest.raises(HFConversionError, match="supported clip_text classes: CLIPTextModel"):
        from_hf(clip_text("CLIPTextModelWithProjection")())
