"""T5 relative position buckets and bias against hand-computed values and Hugging Face."""

from __future__ import annotations

import pytest
import torch

from txblocks.nn.positions import RelativePositionBias, relative_position_bucket

FP32 = torch.float32

# num_buckets=32, max_distance=128. Relative position = key_pos - query_pos.
# Bidirectional: 16 buckets per direction (keys after the query add 16); distances < 8 are
# exact, then 8 + floor(2 * log2(d / 8)), capped at 15.
BIDIRECTIONAL = {
    0: 0, -1: 1, 1: 17, -5: 5, 5: 21, -7: 7, 7: 23, -12: 9, 12: 25, -20: 10, 20: 26,
    -30: 11, -45: 12, 45: 28, -70: 14, 70: 30, -100: 15, 100: 31, -1000: 15, 1000: 31,
}  # fmt: skip
# Causal: keys after the query all fall into bucket 0; distances < 16 are exact, then
# 16 + floor(16/3 * log2(d / 16)), capped at 31.
CAUSAL = {
    0: 0, 5: 0, 100: 0, -1: 1, -15: 15, -16: 16, -20: 17, -25: 19, -30: 20, -40: 23,
    -50: 24, -100: 30, -120: 31, -127: 31, -1000: 31,
}  # fmt: skip


@pytest.mark.parametrize(("bidirectional", "table"), [(True, BIDIRECTIONAL), (False, CAUSAL)])
def test_buckets_match_hand_computed_values(bidirectional: bool, table: dict[int, int]) -> None:
    rel = torch.tensor(list(table))
    got = relative_position_bucket(
        rel, bidirectional=bidirectional, num_buckets=32, max_distance=128
    )
    assert dict(zip(table, got.tolist())) == table


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize(("num_buckets", "max_distance"), [(32, 128), (8, 20), (64, 256)])
def test_buckets_match_hugging_face(
    bidirectional: bool, num_buckets: int, max_distance: int, gen: torch.Generator
) -> None:
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = torch.randint(-3 * max_distance, 3 * max_distance, (40, 50), generator=gen)
    want = T5Attention._relative_position_bucket(
        rel, bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance
    )
    got = relative_position_bucket(
        rel, bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance
    )
    assert torch.equal(got, want)


@pytest.mark.parametrize("causal", [False, True])
def test_bias_reads_the_table_at_key_minus_query(causal: bool, gen: torch.Generator) -> None:
    n_heads = 3
    scheme = RelativePositionBias(n_heads, num_buckets=8, max_distance=20)
    with torch.no_grad():
        scheme.relative_attention_bias.weight.copy_(torch.randn(8, n_heads, generator=gen))
    q_len, k_len, q_offset = 4, 30, 26
    bias = scheme.attention_bias(q_len, k_len, q_offset, causal, torch.device("cpu"), torch.float32)
    assert bias.shape == (1, n_heads, q_len, k_len)
    table = scheme.relative_attention_bias.weight
    for i in range(q_len):
        rel = torch.arange(k_len) - (q_offset + i)
        buckets = relative_position_bucket(
            rel, bidirectional=not causal, num_buckets=8, max_distance=20
        )
        torch.testing.assert_close(bias[0, :, i, :], table[buckets].T)


@pytest.mark.parametrize("is_decoder", [False, True])
def test_bias_matches_hugging_face_t5(is_decoder: bool, gen: torch.Generator) -> None:
    from transformers import T5Config
    from transformers.models.t5.modeling_t5 import T5Attention

    config = T5Config(
        d_model=16, d_kv=4, num_heads=4, relative_attention_num_buckets=32,
        relative_attention_max_distance=128, is_decoder=is_decoder,
    )  # fmt: skip
    hf = T5Attention(config, has_relative_attention_bias=True, layer_idx=0)
    ours = RelativePositionBias(4, num_buckets=32, max_distance=128)
    with torch.no_grad():
        weight = torch.randn(32, 4, generator=gen)
        hf.relative_attention_bias.weight.copy_(weight)
        ours.relative_attention_bias.weight.copy_(weight)
    for q_len, k_len in ((150, 150), (1, 150), (7, 90)):
        offset = k_len - q_len
        want = hf.compute_bias(q_len, k_len, past_seen_tokens=offset)
        got = ours.attention_bias(q_len, k_len, offset, is_decoder, torch.device("cpu"), FP32)
        torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_bias_is_differentiable_and_cast() -> None:
    scheme = RelativePositionBias(2, num_buckets=32, max_distance=128)
    bias = scheme.attention_bias(3, 3, 0, False, torch.device("cpu"), torch.bfloat16)
    assert bias.dtype == torch.bfloat16
    bias.float().sum().backward()
    assert scheme.relative_attention_bias.weight.grad is not None


def test_too_few_buckets_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="num_buckets >= 4"):
        relative_position_bucket(torch.arange(3), bidirectional=True, num_buckets=2, max_distance=8)
