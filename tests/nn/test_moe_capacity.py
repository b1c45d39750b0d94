"""``moe`` capacity options: a fixed ``capacity`` and ``capacity_per: sequence``, against a
reference written with loops and against Hugging Face's Switch Transformers sparse MLP
(whose ``expert_capacity`` counts the tokens of each sequence)."""

from __future__ import annotations

import pytest
import torch

from txblocks.errors import SpecError
from txblocks.nn.moe import MoE

C, F, E = 12, 16, 4


def _moe(registry, gen, **params) -> MoE:
    params.setdefault("expert", {"type": "mlp", "hidden": F, "activation": "relu",
                                 "bias": False})  # fmt: skip
    moe = registry.config("ffn", "moe", normalize_top_k=False, **params).build(C).eval()
    with torch.no_grad():
        for p in moe.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return moe


def _reference(moe: MoE, x: torch.Tensor, capacity: int) -> torch.Tensor:
    """Each batch row on its own: an expert takes the row's assignments, first choices
    first, then in token order, until it holds ``capacity``."""
    out = torch.zeros_like(x)
    for b in range(x.shape[0]):
        taken = [0] * moe.n_experts
        probs = torch.softmax(moe.router(x[b]).float(), dim=-1)  # (T, E)
        weights, experts = probs.topk(moe.top_k, dim=-1)
        for rank in range(moe.top_k):
            for t in range(x.shape[1]):
                e = int(experts[t, rank])
                if taken[e] >= capacity:
                    continue
                taken[e] += 1
                out[b, t] += weights[t, rank] * moe.experts[e](x[b, t][None, None])[0, 0]
    return out


@pytest.mark.parametrize("top_k", [1, 2])
def test_fixed_capacity_per_sequence(registry, gen, top_k):
    moe = _moe(registry, gen, experts=E, top_k=top_k, capacity=2, capacity_per="sequence")
    x = torch.randn(3, 9, C, generator=gen)
    with torch.no_grad():
        out, _ = moe(x)
        torch.testing.assert_close(out, _reference(moe, x, 2), atol=1e-5, rtol=1e-5)
        stats = moe.last_stats
        assert stats.capacity == 2 and stats.dropped > 0
        assert (stats.kept <= 3 * 2).all()  # at most `capacity` per expert in each of 3 rows
        # rows are independent: one row alone gives the same numbers
        torch.testing.assert_close(moe(x[1:2])[0], out[1:2], atol=1e-5, rtol=1e-5)  # BLAS blocking
    assert moe.batch_independent


def test_capacity_factor_per_sequence_counts_the_sequence_length(registry, gen):
    moe = _moe(registry, gen, experts=E, top_k=1, capacity_factor=1.0, capacity_per="sequence")
    x = torch.randn(2, 10, C, generator=gen)
    with torch.no_grad():
        out, _ = moe(x)
        assert moe.last_stats.capacity == 3  # ceil(1.0 · 10 · 1 / 4), not ceil(20 / 4)
        torch.testing.assert_close(out, _reference(moe, x, 3), atol=1e-5, rtol=1e-5)


def test_capacity_per_batch_is_the_default_and_mixes_rows(registry, gen):
    moe = _moe(registry, gen, experts=E, top_k=1, capacity=2)
    assert moe.capacity_per == "batch" and not moe.batch_independent
    x = torch.randn(2, 8, C, generator=gen)
    with torch.no_grad():
        moe(x)
    assert int(moe.last_stats.kept.max()) <= 2


def test_capacity_options_are_checked(registry):
    with pytest.raises(SpecError, match="capacity and capacity_factor"):
        registry.config("ffn", "moe", capacity=4, capacity_factor=1.0)
    with pytest.raises(SpecError, match="capacity_per"):
        registry.config("ffn", "moe", capacity=4, capacity_per="row")
    with pytest.raises(SpecError, match="capacity"):
        registry.config("ffn", "moe", capacity=0)


def test_same_numbers_as_hugging_face_switch(registry, gen):
    switch = pytest.importorskip(
        "transformers.models.switch_transformers.modeling_switch_transformers"
    )
    from transformers import SwitchTransformersConfig

    config = SwitchTransformersConfig(d_model=C, d_ff=F, num_experts=E, expert_capacity=3,
                                      router_jitter_noise=0.0)  # fmt: skip
    hf = switch.SwitchTransformersSparseMLP(config).eval()
    moe = _moe(registry, gen, experts=E, top_k=1, capacity=3, capacity_per="sequence")
    with torch.no_grad():
        hf.router.classifier.weight.copy_(moe.router.weight)
        for e, expert in enumerate(moe.experts):
            hf.experts[f"expert_{e}"].wi.weight.copy_(expert.up.weight)
            hf.experts[f"expert_{e}"].wo.weight.copy_(expert.down.weight)
        x = torch.randn(3, 11, C, generator=gen)
        out, _ = moe(x)
        assert moe.last_stats.dropped > 0  # the capacity matters
        torch.testing.assert_close(out, hf(x), atol=1e-5, rtol=1e-5)
