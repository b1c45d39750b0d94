"""xformers attention as ``torch.library`` custom ops, so that ``torch.compile`` can trace it.

xformers' bias objects and its operator dispatch are Python that dynamo cannot put in a
graph. ``txblocks::xformers_attention`` takes only tensors and plain values (the bias
structure by name, the operator by name) and builds xformers' objects inside, where the
graph does not look. Its fake implementation is the same code run on fake tensors: every
xformers operator calls a torch operator that has one (``aten._efficient_attention_forward``,
``xformers_flash::flash_fwd``), so output, log-sum-exp and random-state shapes match
the real run. The backward is a second custom op, wired with ``torch.library.register_autograd``.

Shapes: B batch, Tq/Tk query/key length, H query heads, G = Hkv kv heads, R = H / G,
D head_dim. q is (B, Tq, H, D), k and v (B, Tk, G, D), the bias (B|1, H|1, Tq, Tk + pad)
with rows padded to 16 bytes.

Layouts (how grouped K/V heads reach xformers): ``heads`` (H == G, BMHK), ``groups``
(BMGHK views, K/V expanded over R without a copy), ``expanded`` (K/V copied to H heads,
BMHK; the backward operators take no BMGHK).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from txblocks.attention.xformers_bias import XFormersStructure
from txblocks.attention.xformers_dispatch import operator

__all__ = ["attention", "xformers_inputs"]

LAYOUTS = ("heads", "groups", "expanded")


def _structure(kind: str, window: int, seqlens: list[int]) -> XFormersStructure | None:
    return XFormersStructure(kind, window, tuple(seqlens)) if kind else None


def xformers_inputs(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    bias: Tensor | None,
    structure: XFormersStructure | None,
    layout: str,
    scale: float,
    p: float,
    bias_grad: bool = False,
) -> Any:
    """The ``xformers.ops.fmha.Inputs`` for one call, in xformers' layout. With ``bias_grad``
    the bias xformers sees requires grad (inside a custom op nothing does: autograd is off)."""
    from xformers.ops import fmha

    batch, q_len, heads, _ = q.shape
    k_len, groups = k.shape[1], k.shape[2]
    if bias is not None:
        bias = bias[..., :k_len].expand(batch, heads, q_len, k_len)
        if layout == "groups":
            bias = bias.unflatten(1, (groups, heads // groups))
        if bias_grad:
            bias = bias.detach().requires_grad_()  # the same strides: xformers reads them
    if layout == "groups":
        q = q.unflatten(2, (groups, heads // groups))
        k, v = (t.unsqueeze(3).expand(-1, -1, -1, heads // groups, -1) for t in (k, v))
    elif layout == "expanded":
        k, v = (t.repeat_interleave(heads // groups, dim=2) for t in (k, v))
    if structure is not None and structure.packed:  # the batch flattened to (1, B*T)
        q, k, v = (t.reshape(1, batch * t.shape[1], *t.shape[2:]) for t in (q, k, v))
    attn_bias = bias if structure is None else structure.build(bias, q.device)
    return fmha.Inputs(q, k, v, attn_bias=attn_bias, p=p, scale=scale)


def _heads_back(t: Tensor, batch: int, groups: int, layout: str, keys: bool) -> Tensor:
    """An xformers-layout output or gradient as (B, T, H, D), or (B, T, G, D) for ``keys``."""
    t = t.reshape(batch, -1, *t.shape[2:])  # undo the (1, B*T) flattening, if any
    if t.ndim == 5:
        t = t.flatten(2, 3)  # b t g r d -> b t (g r) d
    if keys and t.shape[2] != groups:  # gradients of K/V expanded over R
        t = t.unflatten(2, (groups, -1)).sum(3)
    return t


def _rng(state: Any, like: Tensor) -> tuple[Tensor, Tensor]:
    """xformers' random state (a tensor, a pair of tensors, or None) as two tensors."""
    def empty() -> Tensor:  # a new one each time: custom-op outputs may not alias
        return like.new_empty(0, dtype=torch.int64)

    if state is None:
        return empty(), empty()
    if isinstance(state, tuple):
        return state[0], state[1]
    return state, empty()


def _rng_back(seed: Tensor, offset: Tensor) -> Any:
    if seed.numel() == 0:
        return None
    return seed if offset.numel() == 0 else (seed, offset)


@torch.library.custom_op("txblocks::xformers_attention", mutates_args=())
def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    bias: Tensor | None,
    kind: str,
    window: int,
    seqlens: list[int],
    layout: str,
    scale: float,
    p: float,
    forward_op: str,
    backward_op: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """xformers attention through operator ``forward_op``; returns (out, lse, seed, offset).

    ``out`` is (B, Tq, H, D). With a ``backward_op`` (the operator the gradient will run
    through; "" when none is needed), ``lse`` and the random state are kept for it;
    otherwise they are empty.
    ``kind``, ``window`` and ``seqlens`` describe an :class:`XFormersStructure` ("" for none).
    """
    inp = xformers_inputs(q, k, v, bias, _structure(kind, window, seqlens), layout, scale, p)
    out, ctx = operator(forward_op).apply(inp, needs_gradient=bool(backward_op))
    out = _heads_back(out, q.shape[0], k.shape[2], layout, keys=False)
    if ctx is None:
        empty = q.new_empty(0, dtype=torch.float32)
        return out, empty, *_rng(None, q)
    return out, ctx.lse, *_rng(ctx.rng_state, q)


@torch.library.custom_op("txblocks::xformers_attention_backward", mutates_args=())
def attention_backward(
    grad: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    bias: Tensor | None,
    out: Tensor,
    lse: Tensor,
    seed: Tensor,
    offset: Tensor,
    kind: str,
    window: int,
    seqlens: list[int],
    layout: str,
    scale: float,
    p: float,
    backward_op: str,
    bias_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients (dq, dk, dv, dbias) of :func:`attention`; dbias is empty unless ``bias_grad``."""
    from xformers.ops.fmha import Context

    structure = _structure(kind, window, seqlens)
    inp = xformers_inputs(q, k, v, bias, structure, layout, scale, p, bias_grad=bias_grad)
    as_query = inp.query.shape  # out and its gradient come in q's xformers layout
    ctx = Context(lse=lse, out=out.reshape(as_query), rng_state=_rng_back(seed, offset))
    grads = operator(backward_op).apply(ctx, inp, grad.reshape(as_query))
    batch, groups = q.shape[0], k.shape[2]
    dq = _heads_back(grads.dq, batch, groups, layout, keys=False)
    dk, dv = (_heads_back(g, batch, groups, layout, keys=True) for g in (grads.dk, grads.dv))
    if bias is None or not bias_grad or grads.db is None:
        return dq, dk, dv, q.new_empty(0)
    db = grads.db.reshape(batch, -1, *grads.db.shape[-2:])  # (B, H, Tq, Tk)
    db = db.sum(0, keepdim=True) if bias.shape[0] == 1 else db
    db = db.sum(1, keepdim=True) if bias.shape[1] == 1 else db
    return dq, dk, dv, torch.nn.functional.pad(db, (0, bias.shape[-1] - db.shape[-1]))


def _same_code_on_fake_tensors(op: Any) -> None:
    """Register ``op``'s own implementation as its fake: xformers' operators call torch
    operators that have fake implementations, so the shapes come from them."""
    op.register_fake(op._init_fn)


_same_code_on_fake_tensors(attention)
_same_code_on_fake_tensors(attention_backward)


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    q, k, v, bias, kind, window, seqlens, layout, scale, p, _, backward_op = inputs
    out, lse, seed, offset = output
    ctx.save_for_backward(q, k, v, bias, out, lse, seed, offset)
    ctx.plain = (kind, window, seqlens, layout, scale, p)
    ctx.backward_op = backward_op


def _backward(ctx: Any, grad: Tensor, *_: Tensor) -> tuple[Tensor | None, ...]:
    q, k, v, bias, out, lse, seed, offset = ctx.saved_tensors
    if not ctx.backward_op:
        raise RuntimeError("txblocks::xformers_attention ran without a backward operator")
    bias_grad = bias is not None and ctx.needs_input_grad[3]
    dq, dk, dv, db = attention_backward(grad.contiguous(), q, k, v, bias, out, lse, seed, offset,
                                        *ctx.plain, ctx.backward_op, bias_grad)  # fmt: skip
    return dq, dk, dv, (db if bias_grad else None), *([None] * 8)


attention.register_autograd(_backward, setup_context=_setup_context)
