"""The ``moe`` ffn against Hugging Face's Mixtral and Qwen2-MoE sparse blocks, and its aux
loss against their ``load_balancing_loss_func``, at tiny sizes with copied weights."""

from __future__ import annotations

import pytest
import torch

mixtral = pytest.importorskip("transformers.models.mixtral.modeling_mixtral")
qwen2_moe = pytest.importorskip("transformers.models.qwen2_moe.modeling_qwen2_moe")
from transformers import MixtralConfig, Qwen2MoeConfig  # noqa: E402

TOL = dict(atol=1e-5, rtol=1e-5)
C, F, E = 16, 24, 4


def _fill(module: torch.nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


def _copy_experts(ours, hf_experts) -> None:
    """HF stores experts fused: gate_up_proj (E, 2F, C) = [gate; up], down_proj (E, C, F)."""
    with torch.no_grad():
        for i, expert in enumerate(ours.experts):
            expert.gate_up.weight.copy_(hf_experts.gate_up_proj[i])
            expert.down.weight.copy_(hf_experts.down_proj[i])


@pytest.mark.parametrize("top_k", [1, 2])
def test_mixtral_sparse_block(registry, gen, top_k):
    config = MixtralConfig(hidden_size=C, intermediate_size=F, num_local_experts=E,
                           num_experts_per_tok=top_k, hidden_act="silu", router_jitter_noise=0.0)
    hf = mixtral.MixtralSparseMoeBlock(config).eval()
    _fill(hf, gen)
    coef = 0.02
    ours = registry.config(
        "ffn", "moe", experts=E, top_k=top_k, normalize_top_k=True, aux_loss_coef=coef,
        expert={"type": "glu", "activation": "silu", "hidden": F},
    ).build(C).eval()
    with torch.no_grad():
        ours.router.weight.copy_(hf.gate.weight)
    _copy_experts(ours, hf.experts)

    x = torch.randn(2, 9, C, generator=gen)
    out, aux = ours(x)
    with torch.no_grad():
        expected = hf(x.clone())
    torch.testing.assert_close(out, expected, **TOL)

    logits = hf.gate(x.reshape(-1, C))[0]
    hf_aux = mixtral.load_balancing_loss_func((logits,), num_experts=E, top_k=top_k)
    torch.testing.assert_close(aux, coef * hf_aux, **TOL)

    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 5:] = 0
    hf_masked = mixtral.load_balancing_loss_func((logits,), num_experts=E, top_k=top_k,
                                                 attention_mask=mask)
    torch.testing.assert_close(ours(x, mask.bool())[1], coef * hf_masked, **TOL)


@pytest.mark.parametrize("norm_topk_prob", [False, True])
def test_qwen2_moe_block_with_gated_shared_expert(registry, gen, norm_topk_prob):
    shared = 20
    config = Qwen2MoeConfig(hidden_size=C, moe_intermediate_size=F, num_experts=E,
                            num_experts_per_tok=2, shared_expert_intermediate_size=shared,
                            norm_topk_prob=norm_topk_prob, hidden_act="silu")
    hf = qwen2_moe.Qwen2MoeSparseMoeBlock(config).eval()
    _fill(hf, gen)
    ours = registry.config(
        "ffn", "moe", experts=E, top_k=2, normalize_top_k=norm_topk_prob,
        expert={"type": "glu", "activation": "silu", "hidden": F},
        shared_experts=1, shared_hidden=shared, shared_gate=True,
    ).build(C).eval()
    with torch.no_grad():
        ours.router.weight.copy_(hf.gate.weight)
        s = hf.shared_expert
        ours.shared.gate_up.weight.copy_(torch.cat([s.gate_proj.weight, s.up_proj.weight]))
        ours.shared.down.weight.copy_(s.down_proj.weight)
        ours.shared_gate.weight.copy_(hf.shared_expert_gate.weight)
    _copy_experts(ours, hf.experts)

    x = torch.randn(3, 5, C, generator=gen)
    with torch.no_grad():
        expected = hf(x.clone())
    torch.testing.assert_close(ours(x)[0], expected, **TOL)
