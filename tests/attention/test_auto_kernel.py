"""``auto`` picks the best kernel that can run a call and explains when none can."""

from __future__ import annotations

import pydantic
import pytest
import torch

from txblocks.attention.auto import AutoKernel
from txblocks.attention.eager import EagerKernel
from txblocks.attention.kernel import AttentionCall, AttentionKernel
from txblocks.attention.mask import BlockDiagonalMask, CausalMask, FullMask
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


# -- the rule table of docs/gpu.md ---------------------------------------------------------


def _call(mask, q_len, k_len, *, hkv=2, grad=False, dtype=torch.float16):
    q = torch.randn(2, q_len, 4, 8, dtype=dtype, requires_grad=grad)
    k = torch.randn(2, k_len, hkv, 8, dtype=dtype, requires_grad=grad)
    return AttentionCall.of(q, k, mask, v=k)


@pytest.fixture
def xformers_here(monkeypatch):
    """xformers' own rules on CPU tensors, as if this machine had a GPU (see
    txblocks.testing.xformers_on_cpu)."""
    pytest.importorskip("xformers.ops")
    from txblocks.attention.xformers_kernel import XFormersKernel
    from txblocks.testing import xformers_on_cpu

    monkeypatch.setattr(XFormersKernel, "why_not_on", lambda self, device: [])
    return xformers_on_cpu.patch(monkeypatch)


@pytest.mark.parametrize(("mask", "q_len", "k_len", "grad", "expected"), [
    (CausalMask(16, 16), 16, 16, False, "sdpa"),                      # exact causal: is_causal
    (CausalMask(1, 16), 1, 16, False, "sdpa"),                        # a decoding step
    (FullMask(16, 16), 16, 16, False, "sdpa"),                        # no mask
    (CausalMask(16, 16, window=4), 16, 16, False, "xformers"),        # a window: a structure
    (CausalMask(16, 16, window=4), 16, 16, True, "xformers"),         # ... in training too
    (BlockDiagonalMask(16, 16, seq_lens=[[6, 10], [16]]), 16, 16, True, "xformers"),
    (CausalMask(16, 16, key_padding=torch.tensor([[True] * 16, [False] * 4 + [True] * 12])),
     16, 16, False, "sdpa"),                                          # padding: both dense
])  # fmt: skip
def test_auto_picks_by_the_measured_rules(registry, xformers_here, mask, q_len, k_len, grad,
                                          expected):  # fmt: skip
    auto = build(registry, "auto")
    with torch.set_grad_enabled(grad):
        assert auto.select(_call(mask, q_len, k_len, grad=grad)).name == expected


def test_auto_sends_a_bias_to_xformers_unless_it_must_fold_it(registry, xformers_here, gen):
    auto = build(registry, "auto")
    alibi = torch.randn(1, 4, 16, 16, generator=gen, dtype=torch.float16)
    assert auto.select(_call(CausalMask(16, 16, bias=alibi), 16, 16)).name == "xformers"
    # training: no backward operator takes causal + a tensor bias; folded, SDPA is as good
    with torch.enable_grad():
        call = _call(CausalMask(16, 16, bias=alibi.requires_grad_()), 16, 16, grad=True)
        assert auto.select(call).name == "sdpa"


def test_ranks_without_a_gpu(registry):
    kernels = {name: build(registry, name) for name in ("sdpa", "xformers", "eager")}
    causal, window = _call(CausalMask(16, 16), 16, 16), _call(CausalMask(16, 16, window=4), 16, 16)
    assert kernels["sdpa"].cost_rank(causal) == 10 and kernels["sdpa"].cost_rank(window) == 30
    assert kernels["xformers"].cost_rank(window) == 40  # it cannot run on this CPU at all
    assert kernels["eager"].cost_rank(causal) == 100
    assert AttentionKernel().cost_rank(causal) == 50  # a plugin that does not say


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_gqa_training_through_auto_on_cuda(registry, gen, dtype):
    """A Llama-style GQA model trains through `auto` (xformers where it wins) with the
    gradients of the eager reference."""
    import txblocks

    spec = {"arch": "decoder", "vocab_size": 64, "max_seq_len": 128, "d_model": 64, "n_layers": 2,
            "n_heads": 8, "n_kv_heads": 2, "position": "rope",
            "layers": [{"select": 0, "attention": {"mask": {"type": "sliding_window",
                                                             "window": 16}}}]}  # fmt: skip
    model = txblocks.build(txblocks.load_spec(spec, registry=registry)).to("cuda", dtype)
    eager = txblocks.build(txblocks.load_spec(
        {**spec, "block": {"attention": {"kernel": "eager"}}}, registry=registry)).to("cuda")
    eager.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    ids = torch.randint(0, 64, (2, 96), generator=gen).cuda()
    grads = []
    for m in (model, eager):
        m(ids).logits.float().pow(2).mean().backward()
        grads.append({n: p.grad.float() for n, p in m.named_parameters()})
    for name, want in grads[1].items():
        torch.testing.assert_close(grads[0][name], want, atol=3e-2, rtol=3e-2, msg=name)
