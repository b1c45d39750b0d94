"""RoPE against Hugging Face.

Llama (default, linear, dynamic, llama3), GPT-NeoX (partial), GPT-J (interleaved).
"""

from __future__ import annotations

import pytest
import torch

from txblocks.nn.positions import (
    DynamicNTKScaling,
    LinearScaling,
    Llama3Scaling,
    RopeScaling,
    RotaryPositions,
)

HEADS, KV_HEADS, HEAD_DIM, MAX_POS = 4, 2, 16, 32

# (rope_parameters for transformers 5.x's LlamaConfig, our scaling)
CASES: dict[str, tuple[dict, RopeScaling | None]] = {
    "default": ({"rope_type": "default", "rope_theta": 500.0}, None),
    "linear": ({"rope_type": "linear", "rope_theta": 500.0, "factor": 2.5}, LinearScaling(2.5)),
    "dynamic": (
        {"rope_type": "dynamic", "rope_theta": 500.0, "factor": 3.0},
        DynamicNTKScaling(3.0, max_seq_len=MAX_POS),
    ),
    "llama3": (
        {
            "rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16,
        },
        Llama3Scaling(8.0, 1.0, 4.0, original_max_seq_len=16),
    ),
}  # fmt: skip


def hf_llama_rope(rope_parameters: dict):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = LlamaConfig(
        hidden_size=HEADS * HEAD_DIM, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
        head_dim=HEAD_DIM, max_position_embeddings=MAX_POS, rope_parameters=dict(rope_parameters),
    )  # fmt: skip
    return LlamaRotaryEmbedding(config)


def random_positions(gen: torch.Generator, length: int, high: int) -> torch.Tensor:
    """(2, length): sorted random positions below ``high``, as with packing or a cache."""
    ids = torch.stack([torch.randperm(high, generator=gen)[:length] for _ in range(2)])
    return ids.sort(dim=-1).values


@pytest.mark.parametrize("case", list(CASES))
# positions inside, then beyond max_position_embeddings
@pytest.mark.parametrize("high", [MAX_POS, 3 * MAX_POS])
def test_llama_parity_fp32(case: str, high: int, gen: torch.Generator) -> None:
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    rope_parameters, scaling = CASES[case]
    hf = hf_llama_rope(rope_parameters)  # fresh: HF's dynamic rope keeps state between calls
    ours = RotaryPositions(HEAD_DIM, theta=500.0, scaling=scaling)
    position_ids = random_positions(gen, 12, high)
    q = torch.randn(2, 12, HEADS, HEAD_DIM, generator=gen)  # (B, T, H, D)
    k = torch.randn(2, 12, KV_HEADS, HEAD_DIM, generator=gen)

    cos, sin = hf(q, position_ids)  # (B, T, D)
    tables = ours.rotary(position_ids)  # (B, T, 1, D)
    torch.testing.assert_close(tables.cos[:, :, 0], cos, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tables.sin[:, :, 0], sin, atol=1e-5, rtol=1e-5)

    # HF rotates (B, H, T, D)
    q_hf, k_hf = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
    torch.testing.assert_close(ours.rotate(q, tables), q_hf.transpose(1, 2), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.rotate(k, tables), k_hf.transpose(1, 2), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", list(CASES))
def test_llama_parity_bf16(case: str, gen: torch.Generator) -> None:
    """cos/sin in float32, cast to bf16, rotation in bf16: the same steps as Hugging Face."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    rope_parameters, scaling = CASES[case]
    hf = hf_llama_rope(rope_parameters)
    ours = RotaryPositions(HEAD_DIM, theta=500.0, scaling=scaling).to(torch.bfloat16)
    position_ids = random_positions(gen, 10, 2 * MAX_POS)
    q = torch.randn(2, 10, HEADS, HEAD_DIM, generator=gen).to(torch.bfloat16)
    cos, sin = hf(q, position_ids)
    assert cos.dtype == torch.bfloat16
    q_hf, _ = apply_rotary_pos_emb(q.transpose(1, 2), q.transpose(1, 2), cos, sin)
    got = ours.rotate(q, ours.rotary(position_ids))
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, q_hf.transpose(1, 2), atol=0, rtol=0)


def test_dynamic_changes_only_past_max_seq_len(gen: torch.Generator) -> None:
    plain = RotaryPositions(HEAD_DIM, theta=500.0)
    dynamic = RotaryPositions(HEAD_DIM, theta=500.0, scaling=DynamicNTKScaling(3.0, MAX_POS))
    short = torch.arange(MAX_POS)[None]
    assert torch.equal(dynamic.rotary(short).cos, plain.rotary(short).cos)
    long = torch.arange(MAX_POS + 1)[None]
    assert not torch.allclose(dynamic.rotary(long).cos, plain.rotary(long).cos)


@pytest.mark.parametrize("fraction", [0.25, 0.5, 1.0])
def test_gpt_neox_partial_parity(fraction: float, gen: torch.Generator) -> None:
    from transformers import GPTNeoXConfig
    from transformers.models.gpt_neox.modeling_gpt_neox import (
        GPTNeoXRotaryEmbedding,
        apply_rotary_pos_emb,
    )

    config = GPTNeoXConfig(
        hidden_size=HEADS * HEAD_DIM, num_attention_heads=HEADS, max_position_embeddings=MAX_POS,
        rope_parameters={
            "rope_type": "default", "rope_theta": 1000.0, "partial_rotary_factor": fraction
        },
    )  # fmt: skip
    hf = GPTNeoXRotaryEmbedding(config)
    ours = RotaryPositions(HEAD_DIM, theta=1000.0, fraction=fraction)
    position_ids = random_positions(gen, 9, MAX_POS)
    q = torch.randn(2, 9, HEADS, HEAD_DIM, generator=gen)
    cos, sin = hf(q, position_ids)
    assert cos.shape[-1] == ours.rotary_dim
    q_hf, _ = apply_rotary_pos_emb(q.transpose(1, 2), q.transpose(1, 2), cos, sin)
    got = ours.rotate(q, ours.rotary(position_ids))
    torch.testing.assert_close(got, q_hf.transpose(1, 2), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rotary_dim", [4, 16])
def test_gptj_interleaved_parity(rotary_dim: int, gen: torch.Generator) -> None:
    from transformers.models.gptj.modeling_gptj import (
        apply_rotary_pos_emb,
        create_sinusoidal_positions,
    )

    ours = RotaryPositions(HEAD_DIM, fraction=rotary_dim / HEAD_DIM, interleaved=True)
    position_ids = random_positions(gen, 9, MAX_POS)
    q = torch.randn(2, 9, HEADS, HEAD_DIM, generator=gen)  # GPT-J rotates in (B, T, H, D)
    sincos = create_sinusoidal_positions(MAX_POS, rotary_dim)[position_ids]  # (B, T, R)
    sin, cos = torch.split(sincos, rotary_dim // 2, dim=-1)
    q_rot = apply_rotary_pos_emb(q[..., :rotary_dim], sin, cos)
    want = torch.cat([q_rot, q[..., rotary_dim:]], dim=-1)
    got = ours.rotate(q, ours.rotary(position_ids))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
