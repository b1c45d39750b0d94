"""SDPA's gradients for every mask, one backend at a time, against the eager reference.

The first GPU run (shared/gpu/H200-2026-11-30.md) found `kernel: sdpa` giving wrong
gradients of q on CUDA for `prefix_lm(3)` (Tq = Tk = 6, H = Hkv = 4, fp16) while a plain
SDPA call with the same mask was right on every backend. These tests pin each backend
(math, memory-efficient, cuDNN, CPU flash) with txblocks' own mask object and layout, and
with the same mask materialized per batch row and head, so that the backend and the form of
the mask that go wrong are named by the test that fails. On CPU they run in CI.

The cause found: the kernel zeroed the rows that see no key with a `masked_fill` in SDPA's
(B, H, T, D) view, which was also done (as a no-op) for prefix-LM masks. The gradient then
came back to SDPA contiguous in that view, not with the strides of SDPA's output (which is
(B, T, H, D) in memory), and cuDNN's backward, the default on an H200 under torch 2.11, gave
wrong gradients for such a grad_output. The plain call of the report had no `masked_fill`;
sliding windows (whose rows are never empty) had none either. `test_sdpa_gets_a_gradient_with
_its_output_strides` checks that cause on CPU for every mask and padding.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from txblocks.attention.eager import EagerKernel
from txblocks.attention.sdpa import SDPAKernel
from txblocks.testing.masks import builtin_mask_examples, random_padding

H, D, SCALE = 4, 8, 0.3
BACKENDS = {
    "cpu": [SDPBackend.MATH, SDPBackend.FLASH_ATTENTION],
    "cuda": [SDPBackend.MATH, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION],
}
EXAMPLES = {e.label: e for e in builtin_mask_examples() if not e.packed}


def _grads(kernel, leaves, mask, cotangent, materialize=False):
    q, k, v = (t.detach().clone().requires_grad_() for t in leaves)
    if materialize:  # the same mask, dense per batch row and head, contiguous
        attn = mask.additive(q.dtype, q.device)
        dense = None if attn is None else attn.expand(q.shape[0], H, -1, -1).contiguous()
        mask._memo[("sdpa", str(q.dtype), str(q.device))] = (dense, False)  # what sdpa() returns
    out = kernel(q, k, v, mask, scale=SCALE)
    (out.float() * cotangent).sum().backward()
    return [out.detach().float(), q.grad.float(), k.grad.float(), v.grad.float()]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("materialize", [False, True], ids=["as_built", "materialized"])
@pytest.mark.parametrize("label", sorted(EXAMPLES))
def test_sdpa_gradients_on_each_backend(label, materialize, device, gen):
    dtype = torch.float16 if device == "cuda" else torch.float32
    tol = 5e-3 if device == "cuda" else 1e-5
    for padding in ("none", "left"):
        key_padding = random_padding(padding, 2, 6, gen)
        prefix = torch.randint(0, 7, (2,), generator=gen) if EXAMPLES[label].prefix_per_row else None
        mask = EXAMPLES[label].strategy(6, 6, key_padding=key_padding, prefix_lengths=prefix)
        inputs = [torch.randn(2, 6, H, D, generator=gen) for _ in range(3)]
        cotangent = torch.randn(2, 6, H, D, generator=gen).to(device)
        low = [t.to(device, dtype) for t in inputs]
        want = _grads(EagerKernel(), [t.float() for t in low], mask, cotangent)
        for backend in BACKENDS[device]:
            with sdpa_kernel(backend):
                try:
                    got = _grads(SDPAKernel(), low, mask.with_bias(None), cotangent, materialize)
                except RuntimeError as exc:  # this backend does not take these inputs
                    if "No available kernel" in str(exc):
                        continue
                    raise
            for name, a, b in zip(("output", "grad q", "grad k", "grad v"), got, want, strict=True):
                torch.testing.assert_close(
                    a, b, atol=tol, rtol=tol,
                    msg=lambda m, name=name, backend=backend: (
                        f"{label}, padding={padding}, {backend.name}, "
                        f"{'materialized' if materialize else 'as built'}: {name}: {m}"))


@pytest.mark.parametrize("label", sorted(EXAMPLES))
def test_sdpa_gets_a_gradient_with_its_output_strides(label, gen, monkeypatch):
    """The gradient reaching SDPA's output has that output's strides, as a layer uses it
    (``out.flatten(2)``), whatever the mask and the padding (see the module docstring)."""
    real = torch.nn.functional.scaled_dot_product_attention
    seen = []

    def recording(*args, **kwargs):
        out = real(*args, **kwargs)
        out.register_hook(lambda grad: seen.append((tuple(out.stride()), tuple(grad.stride()))))
        return out

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    for padding in ("none", "right", "left"):
        key_padding = random_padding(padding, 2, 6, gen)
        prefix = torch.randint(0, 7, (2,), generator=gen) if EXAMPLES[label].prefix_per_row else None
        mask = EXAMPLES[label].strategy(6, 6, key_padding=key_padding, prefix_lengths=prefix)
        q, k, v = (torch.randn(2, 6, H, D, generator=gen, requires_grad=True) for _ in range(3))
        out = SDPAKernel()(q, k, v, mask, scale=SCALE).flatten(2)  # b t h d -> b t (h d)
        (out * torch.randn(out.shape, generator=gen)).sum().backward()
        out_strides, grad_strides = seen.pop()
        assert grad_strides == out_strides, (
            f"{label}, padding={padding}: SDPA's output has strides {out_strides}, the gradient "
            f"it gets {grad_strides}")
