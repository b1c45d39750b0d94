"""ALiBi slopes and biases against Press et al. 2022."""

from __future__ import annotations

import pytest
import torch

from txblocks.nn.positions import ALiBi, alibi_slopes
from txblocks.nn.positions.alibi import alibi_slope_tensor


def test_slopes_for_eight_heads() -> None:
    assert alibi_slopes(8) == [1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64, 1 / 128, 1 / 256]


def test_slopes_for_twelve_heads() -> None:
    # 12 is not a power of two: the 8 slopes of 8 heads, then every other slope of the
    # 16-head sequence 2^-0.5, 2^-1, 2^-1.5, ..., i.e. 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5.
    want = [2**-1, 2**-2, 2**-3, 2**-4, 2**-5, 2**-6, 2**-7, 2**-8]
    want += [2**-0.5, 2**-1.5, 2**-2.5, 2**-3.5]
    assert alibi_slopes(12) == pytest.approx(want, rel=1e-12)


def test_slopes_match_bloom() -> None:
    from transformers.models.bloom.modeling_bloom import _get_alibi_slopes

    for n in range(1, 25):
        bloom = _get_alibi_slopes(n, torch.device("cpu")).double().tolist()
        assert alibi_slopes(n) == pytest.approx(bloom, rel=1e-6), n


@pytest.mark.parametrize("causal", [True, False])
def test_bias_is_minus_slope_times_distance(causal: bool, gen: torch.Generator) -> None:
    n_heads = 6
    q_len = int(torch.randint(1, 6, (), generator=gen))
    k_len = q_len + int(torch.randint(0, 6, (), generator=gen))
    q_offset = k_len - q_len
    scheme = ALiBi(n_heads)
    bias = scheme.attention_bias(q_len, k_len, q_offset, causal, torch.device("cpu"), torch.float32)
    assert bias.shape == (1, n_heads, q_len, k_len)
    slopes = alibi_slopes(n_heads)
    for h in range(n_heads):
        for i in range(q_len):
            for j in range(k_len):
                distance = (q_offset + i) - j
                if not causal:
                    distance = abs(distance)
                assert bias[0, h, i, j].item() == pytest.approx(-slopes[h] * distance, abs=1e-6)


def test_bias_dtype_and_no_other_hooks() -> None:
    scheme = ALiBi(4).to(torch.bfloat16)
    bias = scheme.attention_bias(3, 5, 2, True, torch.device("cpu"), torch.bfloat16)
    assert bias.dtype == torch.bfloat16
    torch.testing.assert_close(bias[0, :, 0, 0].float(), -2.0 * torch.tensor(alibi_slopes(4)))
    assert scheme.embed(torch.arange(3)[None]) is None
    assert scheme.rotary(torch.arange(3)[None]) is None


@pytest.mark.parametrize("n_heads", [1, 2, 3, 5, 8, 12, 16, 20, 24, 32, 40, 48, 64, 96, 112, 128])
def test_the_device_tensor_equals_the_list(n_heads):
    """alibi_slope_tensor (made on the device, no host copy) holds the list's float32 values,
    bit for bit."""
    got = alibi_slope_tensor(n_heads, "cpu")
    assert got.dtype == torch.float32 and got.shape == (n_heads,)
    assert torch.equal(got, torch.tensor(alibi_slopes(n_heads), dtype=torch.float32))
