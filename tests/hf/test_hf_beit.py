"""BEiT: LayerScale and a 2-D relative position bias, same numbers as Hugging Face.

Tiny random models (d_model 32, 4 heads, a 12×12 image of 4×4 patches), every parameter
perturbed (the bias tables and LayerScale vectors too), fp32, eval mode: the last hidden
state and the logits within 1e-4, then ``to_hf(from_hf(m))``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

from txblocks.hf import from_hf, spec_from_hf, to_hf
from txblocks.hf.family import HFConversionError

from .conftest import perturbed

TOL = 1e-4


def beit(cls: str, **kw: Any) -> Callable[[], Any]:
    base = {"hidden_size": 32, "num_attention_heads": 4, "num_hidden_layers": 2,
            "intermediate_size": 40, "image_size": 12, "patch_size": 4, "num_labels": 3}  # fmt: skip
    return lambda: getattr(transformers, cls)(transformers.BeitConfig(**{**base, **kw}))


CASES = {
    "classifier-per-layer-bias-mean-pooling": beit("BeitForImageClassification",
                                                   use_relative_position_bias=True),
    "base-shared-bias-absolute-cls": beit("BeitModel", use_shared_relative_position_bias=True,
                                          use_absolute_position_embeddings=True,
                                          use_mean_pooling=False),
    "classifier-no-layer-scale-gelu-new": beit("BeitForImageClassification",
                                               use_relative_position_bias=True,
                                               layer_scale_init_value=0.0, hidden_act="gelu_new",
                                               use_mean_pooling=False),
}  # fmt: skip


def pixels(config: Any) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    size = config.image_size
    return torch.randn(3, config.num_channels, size, size, generator=g)


@pytest.mark.parametrize("case", list(CASES))
def test_from_hf_same_numbers(case: str) -> None:
    hf = perturbed(CASES[case])
    model = from_hf(hf)
    x = pixels(hf.config)
    with torch.no_grad():
        hidden = hf.base_model(x).last_hidden_state
        logits = hf(x).logits if hf.base_model is not hf else None
        out = model(x)
    assert hidden.abs().max() > 0.1
    assert (hidden - out.last_hidden_state).abs().max() <= TOL
    assert (logits is None) == (out.logits is None)
    if logits is not None:
        assert (logits - out.logits).abs().max() <= TOL


def test_the_relative_bias_matters() -> None:
    """Without the 2-D bias (the 0.37 of issue 16) the numbers are off."""
    hf = perturbed(CASES["classifier-per-layer-bias-mean-pooling"])
    model = from_hf(hf)
    x = pixels(hf.config)
    with torch.no_grad():
        reference = hf(x).logits
        for table in model.position.tables:
            table.zero_()
        assert (model(x).logits - reference).abs().max() > 1e-3


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip(case: str) -> None:
    hf = perturbed(CASES[case])
    model = from_hf(hf)
    back = to_hf(model)
    assert type(back) is type(hf)
    source = hf.state_dict()
    for name, tensor in back.state_dict().items():  # BeitModel comes back without its pooler
        torch.testing.assert_close(tensor, source[name], rtol=0, atol=0, msg=name)
    assert spec_from_hf(back).model_dump(exclude={"name"}) == model.spec.model_dump(
        exclude={"name"})


def test_both_bias_tables_at_once_are_refused() -> None:
    hf = beit("BeitModel", use_relative_position_bias=True, use_shared_relative_position_bias=True)()
    with pytest.raises(HFConversionError, match="use_shared_relative_position_bias"):
        from_hf(hf)
