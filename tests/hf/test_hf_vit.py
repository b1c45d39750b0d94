"""ViT: patches, class token, learned positions and a classifier, same numbers as Hugging Face.

Tiny random models (d_model 48, 6 heads, a 12×8 image of 4×4 patches: a 3×2 grid), every
parameter perturbed, fp32, eval mode; every token's last hidden state and the logits
within 1e-4, then ``to_hf(from_hf(m))``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

import txblocks
from txblocks.hf import from_hf, spec_from_hf, to_hf

from .conftest import perturbed

TOL = 1e-4


def vit(cls: str, **kw: Any) -> Callable[[], Any]:
    base = {"hidden_size": 48, "num_attention_heads": 6, "num_hidden_layers": 2,
            "intermediate_size": 40, "image_size": [12, 8], "patch_size": 4, "num_labels": 5,
            "hidden_act": "gelu"}  # fmt: skip
    return lambda: getattr(transformers, cls)(transformers.ViTConfig(**{**base, **kw}))


CASES = {
    "classifier": vit("ViTForImageClassification"),
    "classifier-no-qkv-bias-gelu-new": vit("ViTForImageClassification", qkv_bias=False,
                                           hidden_act="gelu_new", layer_norm_eps=1e-6),
    "base-with-pooler-square": vit("ViTModel", image_size=8, patch_size=[4, 2], num_channels=1),
}  # fmt: skip


def pixels(config: Any) -> torch.Tensor:
    size = config.image_size
    h, w = (size, size) if isinstance(size, int) else size
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, config.num_channels, h, w, generator=g)


def outputs(hf: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    with torch.no_grad():
        hidden = hf.base_model(x).last_hidden_state
        logits = hf(x).logits if hf.base_model is not hf else None
    return hidden, logits


@pytest.mark.parametrize("case", list(CASES))
def test_from_hf_same_numbers(case: str) -> None:
    hf = perturbed(CASES[case])
    model = from_hf(hf)
    x = pixels(hf.config)
    hidden, logits = outputs(hf, x)
    with torch.no_grad():
        out = model(x)
    assert hidden.abs().max() > 0.1
    assert hidden.shape == out.last_hidden_state.shape
    assert (hidden - out.last_hidden_state).abs().max() <= TOL
    assert (logits is None) == (out.logits is None)
    if logits is not None:
        assert (logits - out.logits).abs().max() <= TOL


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip(case: str) -> None:
    hf = perturbed(CASES[case])
    model = from_hf(hf)
    back = to_hf(model)
    assert type(back) is type(hf)
    source = hf.state_dict()
    for name, tensor in back.state_dict().items():  # ViTModel comes back without its pooler
        torch.testing.assert_close(tensor, source[name], rtol=0, atol=0, msg=name)
    assert spec_from_hf(back).model_dump(exclude={"name"}) == model.spec.model_dump(
        exclude={"name"}
    )
    x = pixels(hf.config)
    (h1, y1), (h2, y2) = outputs(hf, x), outputs(back, x)
    assert (h1 - h2).abs().max() <= TOL
    if y1 is not None:
        assert (y1 - y2).abs().max() <= TOL


def test_spec() -> None:
    spec = spec_from_hf(perturbed(CASES["classifier-no-qkv-bias-gelu-new"]))
    assert (spec.image_hw, spec.patch_hw, spec.class_token, spec.patch_position) == (
        (12, 8), (4, 4), True, "learned")  # fmt: skip
    attention = spec.block.attention
    assert (attention.qkv_bias, attention.out_bias, spec.block.ffn.activation.type) == (
        False, True, "gelu_tanh")  # fmt: skip
    assert (spec.head.type, spec.head.pooling, spec.head.n_classes) == ("classifier", "cls", 5)


def test_vit_preset_goes_to_vit() -> None:
    torch.manual_seed(0)
    spec = {"extends": "vit-b16", "n_layers": 2, "d_model": 48, "n_heads": 6, "image_size": 32,
            "block": {"ffn": {"hidden": 40}}, "head": {"n_classes": 3}}  # fmt: skip
    model = txblocks.build(spec).eval()
    hf = to_hf(model)
    assert type(hf).__name__ == "ViTForImageClassification"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x).logits, atol=TOL, rtol=0)
