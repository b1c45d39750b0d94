"""CLIP vision: a ViT with a LayerNorm right after the patch embeddings (``pre_layrnorm``).

Tiny random ``CLIPVisionModel`` (d_model 48, 6 heads, a 12×12 image of 4×4 patches), every
parameter perturbed, fp32, eval mode; every token's last hidden state within 1e-4, then
``to_hf(from_hf(m))`` (``post_layernorm``, read by ``pooler_output`` only, is skipped).
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


def clip(**kw: Any) -> Callable[[], Any]:
    base = {"hidden_size": 48, "num_attention_heads": 6, "num_hidden_layers": 2,
            "intermediate_size": 40, "image_size": 12, "patch_size": 4}  # fmt: skip
    return lambda: transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**{**base, **kw}))


CASES = {
    "quick-gelu": clip(),
    "gelu-eps-one-channel": clip(hidden_act="gelu", layer_norm_eps=1e-6, num_channels=1,
                                 patch_size=3),
}  # fmt: skip


def pixels(config: Any) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, config.num_channels, config.image_size, config.image_size, generator=g)


@pytest.mark.parametrize("case", list(CASES))
def test_from_hf_same_numbers(case: str) -> None:
    hf = perturbed(CASES[case])
    model = from_hf(hf)
    assert model.spec.front_end.type == "patches" and model.spec.front_end.norm is not None
    x = pixels(hf.config)
    with torch.no_grad():
        hidden = hf(x).last_hidden_state
        out = model(x).last_hidden_state
    assert hidden.abs().max() > 0.1
    assert hidden.shape == out.shape
    assert (hidden - out).abs().max() <= TOL


def test_the_pre_norm_matters() -> None:
    """Without the patches' norm the hidden states are far off: the 3.55 of issue 16."""
    hf = perturbed(CASES["quick-gelu"])
    model = from_hf(hf)
    x = pixels(hf.config)
    with torch.no_grad():
        hidden = hf(x).last_hidden_state
        model.patch_embed.norm = None
        off = (model(x).last_hidden_state - hidden).abs().max()
    assert off > 0.1


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip(case: str) -> None:
    hf = perturbed(CASES[case])
    model = from_hf(hf)
    back = to_hf(model)
    assert type(back) is type(hf)
    source = hf.state_dict()
    for name, tensor in back.state_dict().items():
        if name.startswith("post_layernorm."):
            continue  # pooler_output only: skipped by from_hf
        torch.testing.assert_close(tensor, source[name], rtol=0, atol=0, msg=name)
    assert spec_from_hf(back).model_dump(exclude={"name"}) == model.spec.model_dump(
        exclude={"name"})
    x = pixels(hf.config)
    with torch.no_grad():
        torch.testing.assert_close(back(x).last_hidden_state, hf(x).last_hidden_state,
                                   rtol=0, atol=TOL)
