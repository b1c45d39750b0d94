"""DeiT: a ViT whose distillation token is a register token, same numbers as Hugging Face.

Tiny random models (d_model 48, 6 heads, 2 layers, non-square images and patches), every
parameter perturbed, query and key weights scaled up, fp32, eval mode: hidden states of all
tokens and logits within 1e-4; ``to_hf(from_hf(m))`` gives ``m``'s class, weights and
outputs, the distillation token and its position row summed the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

from txblocks.hf import HFConversionError, from_hf, spec_from_hf

from .conftest import both_ways, perturbed, scaled

QK = (".q_proj.", ".k_proj.")
TOKEN, TABLE = "embeddings.distillation_token", "embeddings.position_embeddings"


def deit(cls: str, **kw: Any) -> Callable[[], Any]:
    base = {"hidden_size": 48, "num_attention_heads": 6, "num_hidden_layers": 2,
            "intermediate_size": 40, "image_size": [12, 16], "patch_size": [4, 8],
            "num_channels": 2, "num_labels": 5, "initializer_range": 0.1}  # fmt: skip
    config = transformers.DeiTConfig(**{**base, **kw})
    return lambda: scaled(perturbed(lambda: getattr(transformers, cls)(config)), QK)


CASES = {
    "classifier": deit("DeiTForImageClassification"),
    "base-with-pooler-no-qkv-bias": deit("DeiTModel", qkv_bias=False, hidden_act="gelu_new"),
}


def pixels(config: Any) -> torch.Tensor:
    h, w = config.image_size
    return torch.randn(3, config.num_channels, h, w, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("case", list(CASES))
def test_same_numbers_both_ways(case: str) -> None:
    hf = CASES[case]()
    model = from_hf(hf)
    x = pixels(hf.config)
    with torch.no_grad():
        h_hf = hf.base_model(pixel_values=x).last_hidden_state
        y_hf = hf(pixel_values=x).logits if hf.base_model is not hf else None
        out = model(x)
    assert h_hf.shape == out.last_hidden_state.shape  # cls, distillation, 6 patches
    assert (h_hf - out.last_hidden_state).abs().max() <= 1e-4
    if y_hf is not None:
        assert (y_hf - out.logits).abs().max() <= 1e-4
    prefix = "deit." if hf.base_model is not hf else ""
    back = both_ways(hf, {"pixel_values": x}, unread=(prefix + TOKEN, prefix + TABLE))
    source, got = hf.state_dict(), back.state_dict()
    fold = lambda s: s[prefix + TOKEN][0, 0] + s[prefix + TABLE][0, 1]  # noqa: E731
    torch.testing.assert_close(fold(got), fold(source), atol=1e-6, rtol=0)
    for rows in (slice(0, 1), slice(2, None)):
        assert torch.equal(got[prefix + TABLE][:, rows], source[prefix + TABLE][:, rows])


def test_spec() -> None:
    spec = spec_from_hf(CASES["classifier"]())
    assert (spec.arch, spec.class_token, spec.register_tokens) == ("vit", True, 1)
    assert (spec.head.type, spec.head.pooling, spec.head.n_classes) == ("classifier", "cls", 5)
    model = from_hf(CASES["classifier"]())
    assert model.patch_embed.position.shape == (1, 1 + 6, 48)  # no row for the register


def test_teacher_head_is_refused() -> None:
    with pytest.raises(HFConversionError, match="supported deit classes: DeiTModel, DeiTFor"):
        from_hf(deit("DeiTForImageClassificationWithTeacher")())
