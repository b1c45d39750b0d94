"""Conformance of a positional scheme's score term (``PositionalScheme.score_bias``).

Shapes: B batch, H heads, Hkv key/value heads, D head_dim, Tq/Tk query/key lengths.
"""

from __future__ import annotations

import torch
from torch import Tensor

from txblocks.attention.eager import EagerKernel
from txblocks.nn.attention import Attention
from txblocks.nn.positional import PositionalScheme
from txblocks.testing.report import Report, assert_close, fail

__all__ = ["check_score_bias"]

#: (Tq, Tk, q_offset) of the calls compared with one full (L, L) call.
SCORE_CALLS = ((3, 7, 4), (1, 6, 5), (2, 9, 3), (4, 4, 0))


def check_score_bias(
    scheme: PositionalScheme, *, n_heads: int, n_kv_heads: int, head_dim: int,
    d_model: int | None, n_layers: int, attention: Attention | None, relative: bool,
    max_position: int, subject: str, seed: int, report: Report, gen: torch.Generator,
) -> None:  # fmt: skip
    """The ``score_bias`` part of :func:`~txblocks.testing.check_positional_scheme` (see
    there); records what ran or why it was skipped in ``report``.

    Raises:
        AssertionError: naming the property, the layer and the call.
    """
    if attention is None:
        width = d_model or n_heads * head_dim
        attention = Attention(width, n_heads, n_kv_heads, head_dim, EagerKernel())
    size = min(9, max_position)
    for layer in range(n_layers):
        q = torch.randn(2, size, n_heads, head_dim, generator=gen)
        k = torch.randn(2, size, n_kv_heads, head_dim, generator=gen)
        setting = f"score_bias(q (2, {size}, {n_heads}, {head_dim}), k (2, {size}, {n_kv_heads}, " \
                  f"{head_dim}), layer={layer}, q_offset=0)"
        full = _call(scheme, q, k, attention, layer, 0, subject, setting, seed)
        if full is None:
            report.skip(f"score_bias (layer {layer})", "score_bias() returned None")
            continue
        _check_rows(scheme, q, k, attention, layer, full, subject, setting, seed)
        for q_len, k_len, offset in SCORE_CALLS:
            if offset + q_len > size or k_len > size or offset + q_len > k_len:
                continue
            call = (f"score_bias(q rows {offset}..{offset + q_len - 1}, k rows 0..{k_len - 1}, "
                    f"layer={layer}, q_offset={offset})")  # fmt: skip
            part = _call(scheme, q[:, offset : offset + q_len], k[:, :k_len], attention, layer,
                         offset, subject, call, seed)  # fmt: skip
            want = full[..., offset : offset + q_len, :k_len]
            assert_close(part, want, what=f"score term (against rows {offset}..{offset + q_len - 1}"
                         f" of a full {size}x{size} call)", subject=subject, setting=call,
                         atol=1e-5, rtol=1e-5, seed=seed)  # fmt: skip
        _check_depends_on_qk(scheme, q, k, attention, layer, full, subject, setting, seed)
        if relative:
            _check_relative(scheme, q, k, attention, layer, subject, seed)
        report.ran.append(f"score_bias (layer {layer}): shapes, batch rows, KV-cache slices, "
                          f"a function of q and k{', relative' if relative else ''}")  # fmt: skip
    scheme.zero_grad(set_to_none=True)
    attention.zero_grad(set_to_none=True)


def _call(scheme: PositionalScheme, q: Tensor, k: Tensor, attention: Attention, layer: int,
          q_offset: int, subject: str, setting: str, seed: int) -> Tensor | None:
    out = scheme.score_bias(q, k, attention, layer=layer, q_offset=q_offset)
    if out is None:
        return None
    batch, q_len, heads, _ = q.shape
    k_len = k.shape[1]
    shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
    if (not isinstance(out, Tensor) or out.ndim != 4 or out.shape[0] not in (1, batch)
            or out.shape[1] not in (1, heads) or tuple(out.shape[2:]) != (q_len, k_len)):
        raise fail(subject, f"score term has shape {shape}, expected (B|1, H|1, Tq, Tk) = "
                   f"({batch}|1, {heads}|1, {q_len}, {k_len})", setting, seed)  # fmt: skip
    if out.dtype != q.dtype:
        raise fail(subject, f"score term is {out.dtype}, expected q's {q.dtype}", setting, seed)
    if not torch.isfinite(out).all():
        raise fail(subject, "score term is not finite", setting, seed)
    return out


def _check_rows(scheme: PositionalScheme, q: Tensor, k: Tensor, attention: Attention,
                layer: int, full: Tensor, subject: str, setting: str, seed: int) -> None:
    """Row 1 alone gives row 1 of the batched call (no mixing across the batch)."""
    alone = scheme.score_bias(q[1:], k[1:], attention, layer=layer, q_offset=0)
    want = full[1:] if full.shape[0] > 1 else full
    assert_close(alone, want, what="score term of batch row 1 computed alone (it depends on the "
                 "other rows)", subject=subject, setting=setting, atol=1e-5, rtol=1e-5,
                 seed=seed)  # fmt: skip


def _check_depends_on_qk(scheme: PositionalScheme, q: Tensor, k: Tensor, attention: Attention,
                         layer: int, full: Tensor, subject: str, setting: str,
                         seed: int) -> None:  # fmt: skip
    """Other q and k give another term; gradients reach q or k (those that reach are finite);
    parameters' gradients are finite."""
    other = scheme.score_bias(q.flip(1) * 2 + 1, k.flip(1) * 2 + 1, attention, layer=layer,
                              q_offset=0)  # fmt: skip
    if other is None or torch.allclose(other, full, atol=1e-6, rtol=1e-6):
        raise fail(subject, "score term does not change when q and k change: a term of "
                   "positions alone belongs in attention_bias", setting, seed)  # fmt: skip
    q_in, k_in = q.clone().requires_grad_(), k.clone().requires_grad_()
    out = scheme.score_bias(q_in, k_in, attention, layer=layer, q_offset=0)
    if out is None or not out.requires_grad:
        raise fail(subject, "score term carries no gradient: it must be differentiable in q "
                   "and k", setting, seed)  # fmt: skip
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    (out * weights).sum().backward()
    reached = [name for name, t in (("q", q_in), ("k", k_in))
               if t.grad is not None and bool(t.grad.abs().sum() > 0)]  # fmt: skip
    if not reached:
        raise fail(subject, "no gradient reaches q or k through the score term", setting, seed)
    for name, t in (("q", q_in), ("k", k_in)):
        if t.grad is not None and not torch.isfinite(t.grad).all():
            raise fail(subject, f"gradient of {name} through the score term is not finite",
                       setting, seed)  # fmt: skip
    for module, what in ((scheme, "scheme"), (attention, "attention")):
        for pname, param in module.named_parameters():
            if param.grad is not None and not torch.isfinite(param.grad).all():
                raise fail(subject, f"score_bias: gradient of the {what}'s {pname!r} is not "
                           "finite", setting, seed)  # fmt: skip


def _check_relative(scheme: PositionalScheme, q: Tensor, k: Tensor, attention: Attention,
                    layer: int, subject: str, seed: int) -> None:
    """With one q vector and one k vector repeated at every position, the term depends only on
    the offset: constant along each diagonal ``k - q = const``."""
    size = q.shape[1]
    same_q = q[:, :1].expand_as(q).contiguous()
    same_k = k[:, :1].expand_as(k).contiguous()
    setting = f"score_bias(one q and one k vector at all {size} positions, layer={layer})"
    out = scheme.score_bias(same_q, same_k, attention, layer=layer, q_offset=0)
    if out is None:
        return
    assert_close(out[..., 1:, 1:], out[..., :-1, :-1], what="score term at (q+1, k+1) against "
                 "(q, k) for position-independent q and k (not relative: it changes along a "
                 "diagonal k - q = const)", subject=subject, setting=setting, atol=1e-5,
                 rtol=1e-5, seed=seed)  # fmt: skip
