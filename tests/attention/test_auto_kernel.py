"""``auto`` picks the best kernel that can run a call and explains when none can."""

from __future__ import annotations

import pydantic
import pytest
import torch

from txblocks.attention.auto import AutoKernel
from txblocks.attention.eager import EagerKernel
from txblocks.attention.kernel import AttentionCall, AttentionKernel
from txblocks.attention.mask import CausalMask
from txblocks.attention.sdpa import SDPAKernel
from txblocks.errors import KernelUnavailableError

CPU = torch.device("cpu")


def build(registry, name, **params):
    entry = registry.get("attention", name)
    return entry.factory(entry.config(**params))


@pytest.fixture
def qkv(gen):
    q = torch.randn(2, 5, 4, 8, generator=gen)
    k, v = (torch.randn(2, 5, 2, 8, generator=gen) for _ in range(2))
    return q, k, v


def test_registered_kernels(registry):
    assert registry.names("attention") == ["auto", "eager", "sdpa", "xformers"]
    kernels = {name: build(registry, name) for name in registry.names("attention")}
    for name, kernel in kernels.items():
        assert isinstance(kernel, AttentionKernel) and kernel.name == name
        assert registry.get("attention", name).description
    assert kernels["xformers"].priority > kernels["sdpa"].priority > kernels["eager"].priority


def test_auto_picks_sdpa_on_cpu_and_eager_for_softcap(registry, qkv):
    auto = build(registry, "auto")
    q, k, v = qkv
    mask = CausalMask(5, 5)
    assert auto.why_not_on(CPU) == []
    assert isinstance(auto.select(AttentionCall.of(q, k, mask)), SDPAKernel)
    assert isinstance(auto.select(AttentionCall.of(q, k, mask, softcap=20.0)), EagerKernel)
    assert isinstance(auto.select(AttentionCall.of(q, k, mask, dropout=0.1)), SDPAKernel)
    out = auto(q, k, v, mask, scale=0.35, softcap=2.0)
    torch.testing.assert_close(out, EagerKernel()(q, k, v, mask, scale=0.35, softcap=2.0))


def test_auto_orders_candidates_by_priority(registry):
    auto = build(registry, "auto", candidates=["eager", "sdpa", "xformers"])
    assert [k.name for k in auto.candidates] == ["xformers", "sdpa", "eager"]
    assert repr(auto) == "AutoKernel([xformers, sdpa, eager])"


def test_auto_error_lists_every_candidate_and_reason(registry, qkv):
    q, k, v = qkv
    auto = build(registry, "auto", candidates=["xformers", "sdpa"])
    with pytest.raises(KernelUnavailableError) as info:
        auto(q, k, v, CausalMask(5, 5), scale=0.35, softcap=3.0)
    message = str(info.value)
    assert "no attention kernel can run this call" in message
    assert "\n  xformers: " in message and "CUDA" in message
    assert "\n  sdpa: " in message and "softcap" in message
    assert "Hkv=2" in message and "softcap=3.0" in message  # the call is described

    only_xformers = build(registry, "auto", candidates=["xformers"])
    reasons = only_xformers.why_not_on(CPU)
    assert len(reasons) == 1 and "xformers:" in reasons[0] and "sdpa" in reasons[0]


def test_auto_config_is_validated(registry):
    entry = registry.get("attention", "auto")
    with pytest.raises(pydantic.ValidationError):
        entry.config(candidates=["flash"])
    with pytest.raises(pydantic.ValidationError):
        entry.config(candidates=[])
    with pytest.raises(ValueError, match="at least one candidate"):
        AutoKernel([])


def test_sdpa_refuses_softcap_with_a_reason(qkv):
    q, k, v = qkv
    assert SDPAKernel().why_not(AttentionCall.of(q, k, CausalMask(5, 5), dropout=0.2)) == []
    with pytest.raises(KernelUnavailableError, match="'sdpa' cannot run.*softcap.*'eager'"):
        SDPAKernel()(q, k, v, CausalMask(5, 5), scale=0.35, softcap=3.0)


def test_attention_call_describes_the_call(qkv):
    q, k, _ = qkv
    call = AttentionCall.of(q.requires_grad_(), k, CausalMask(5, 5), 0.1, None)
    assert (call.batch, call.q_len, call.k_len, call.n_heads, call.n_kv_heads, call.head_dim) == (
        2, 5, 5, 4, 2, 8,
    )  # fmt: skip
    assert call.requires_grad and call.dtype == torch.float32 and call.device == CPU
    with torch.no_grad():
        assert not AttentionCall.of(q, k, CausalMask(5, 5)).requires_grad
