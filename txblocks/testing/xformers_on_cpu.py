"""xformers' operators made to run on CPU tensors, for tests: their rules stay xformers' own.

:func:`patch` (with pytest's ``monkeypatch``) lets every registered attention operator accept
the CPU as its device and count as built, lists the operators of a CUDA build of torch, and
replaces each operator's ``apply`` with the plain math below (forward and backward), which
also checks the 16-byte alignment xformers' CUDA kernels need of a tensor bias. Everything
else (``not_supported_reasons``, the dispatch, the autograd function) is xformers' code.
``ran`` records the ``NAME`` of each operator applied.

Shapes: B batch, M queries, N keys, H heads, K head_dim; BMHK or BMGHK (G groups of R).
"""

from __future__ import annotations

import torch
from torch import Tensor

ran: list[str] = []


def _check_aligned(bias: Tensor) -> None:
    alignment = 128 // torch.finfo(bias.dtype).bits
    assert all(s % alignment == 0 for s in bias.stride()[:-1]), f"misaligned {bias.stride()}"
    assert bias.stride(-1) == 1, bias.stride()


def _scores(inp) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """q, k, v as (B, H, M|N, K) float32 and the scores (B, H, M, N) with the bias added."""
    from xformers.ops.fmha import attn_bias as ab

    q, k, v = inp.query, inp.key, inp.value
    bias_shape = (q.shape[0], *q.shape[2:-1], q.shape[1], k.shape[1])  # (B, [G, R | H], M, N)
    if q.ndim == 5:
        q, k, v = (t.flatten(2, 3) for t in (q, k, v))
    q, k, v = (t.float().transpose(1, 2) for t in (q, k, v))
    batch, heads, m, n = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    scores = q @ k.transpose(-1, -2) * inp.scale_float
    bias = inp.attn_bias
    if isinstance(bias, Tensor):
        _check_aligned(bias)
        scores = scores + bias.float().reshape(batch, heads, m, n)
    elif bias is not None:
        if isinstance(bias, ab.LowerTriangularMaskWithTensorBias):
            _check_aligned(bias._bias)
        dense = bias.materialize(bias_shape, dtype=torch.float32)
        scores = scores + dense.reshape(batch, heads, m, n)
    return q, k, v, scores


def forward_apply(cls, inp, needs_gradient):
    from xformers.ops.fmha import Context

    ran.append(cls.NAME)
    assert inp.p == 0.0
    _, _, v, scores = _scores(inp)
    out = (scores.softmax(-1) @ v).transpose(1, 2).to(inp.query.dtype).reshape(
        *inp.query.shape[:-1], inp.value.shape[-1])  # fmt: skip
    if not needs_gradient:
        return out, None
    lse = scores.logsumexp(-1).reshape(inp.query.shape[0], *inp.query.shape[2:-1], -1)
    return out, Context(out=out, lse=_lse_format(cls, inp, lse))


def _lse_format(cls, inp, lse: Tensor) -> Tensor:
    """The log-sum-exp ``(B, *GH, M)`` as operator ``cls`` gives it: for packed sequences
    with ``VARLEN_LSE_PACKED`` False, one padded row per sequence ``(S, *GH, max M)``."""
    from xformers.ops.fmha import attn_bias as ab

    bias = inp.attn_bias
    if not isinstance(bias, ab.VARLEN_BIASES) or cls.VARLEN_LSE_PACKED:
        return lse
    starts = bias.q_seqinfo.seqstart_py
    padded = lse.new_full((len(starts) - 1, *lse.shape[1:-1], bias.q_seqinfo.max_seqlen), 0.0)
    for i, (a, b) in enumerate(zip(starts, starts[1:])):
        padded[i, ..., : b - a] = lse[0, ..., a:b]
    return padded


def backward_apply(cls, ctx, inp, grad):
    """dS = P ∘ (dP - rowsum(dO ∘ O)), with P the softmax and dP = dO Vᵀ."""
    from xformers.ops.fmha import Gradients

    ran.append(cls.NAME)
    q, k, v, scores = _scores(inp)
    probs = scores.softmax(-1)
    g = grad.reshape(*inp.query.shape[:2], -1, grad.shape[-1]).float().transpose(1, 2)
    out = probs @ v
    d_scores = probs * (g @ v.transpose(-1, -2) - (g * out).sum(-1, keepdim=True))

    def back(t: Tensor, like: Tensor) -> Tensor:
        return t.transpose(1, 2).to(like.dtype).reshape(like.shape)

    dq = back(d_scores @ k * inp.scale_float, inp.query)
    dk = back(d_scores.transpose(-1, -2) @ q * inp.scale_float, inp.key)
    dv = back(probs.transpose(-1, -2) @ g, inp.value)
    bias = inp.attn_bias
    db = d_scores.to(bias.dtype) if isinstance(bias, Tensor) and bias.requires_grad else None
    return Gradients(dq=dq, dk=dk, dv=dv, db=db)


def patch(monkeypatch) -> list[str]:
    """Apply the patches described above; returns ``ran``, emptied. txblocks' cache of
    xformers' verdicts starts empty and is put back afterwards (the rules differ here)."""
    import functools

    from xformers.ops.common import OPERATORS_REGISTRY
    from xformers.ops.fmha.common import AttentionBwOpBase, AttentionFwOpBase

    from txblocks.attention import xformers_kernel

    fresh = functools.lru_cache(maxsize=None)(xformers_kernel._plan_cached.__wrapped__)
    monkeypatch.setattr(xformers_kernel, "_plan_cached", fresh)
    monkeypatch.setattr(torch.version, "cuda", torch.version.cuda or "12.8")
    for op in OPERATORS_REGISTRY:
        if getattr(op, "OPERATOR_CATEGORY", "") != "memory_efficient_attention":
            continue
        monkeypatch.setattr(op, "SUPPORTED_DEVICES", {*op.SUPPORTED_DEVICES, "cpu"})
        monkeypatch.setattr(op, "is_available", classmethod(lambda cls: True))
        if issubclass(op, AttentionFwOpBase):
            monkeypatch.setattr(op, "apply", classmethod(forward_apply))
        elif issubclass(op, AttentionBwOpBase):
            monkeypatch.setattr(op, "apply", classmethod(backward_apply))
    ran.clear()
    return ran
