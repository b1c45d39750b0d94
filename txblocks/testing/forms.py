"""The forms of one mask (keep, empty rows, additive, SDPA, xformers) must agree.

Shapes: B batch, H heads, Tq query length, Tk key length.
"""

from __future__ import annotations

import functools
from types import ModuleType

import torch
from torch import Tensor

from txblocks.attention.mask import AttentionMask
from txblocks.testing.report import Report, fail

__all__ = ["compare_forms", "keep_or_all", "xformers_attn_bias"]

_F32 = torch.float32
_MIN = torch.finfo(_F32).min


@functools.cache
def xformers_attn_bias() -> ModuleType | str:
    """xformers' ``attn_bias`` module, or why it cannot be imported."""
    try:
        from xformers.ops.fmha import attn_bias
    except Exception as exc:  # not installed, or built for another torch
        return f"xformers is not importable ({type(exc).__name__}: {exc})"
    return attn_bias


def _broadcast(
    t: Tensor, batch: int, what: str, subject: str, setting: str, seed: int | None
) -> Tensor:
    """``t (B|1, 1, Tq, Tk)`` as ``(B, Tq, Tk)``; fail naming ``what`` on any other shape."""
    if t.ndim != 4 or t.shape[0] not in (1, batch) or t.shape[1] != 1:
        raise fail(
            subject, f"{what} has shape {tuple(t.shape)}, expected (B|1, 1, Tq, Tk)", setting, seed
        )
    return t.expand(batch, -1, -1, -1)[:, 0]


def keep_or_all(
    mask: AttentionMask,
    batch: int,
    device: torch.device | str,
    subject: str = "mask",
    setting: str = "",
    seed: int | None = None,
) -> Tensor:
    """``mask.keep()`` as bool ``(B, Tq, Tk)`` on the CPU (None: everything kept)."""
    keep = mask.keep(device)
    if keep is None:
        return torch.ones(batch, mask.q_len, mask.k_len, dtype=torch.bool)
    if keep.dtype != torch.bool:
        raise fail(subject, f"keep() returned {keep.dtype}, expected torch.bool", setting, seed)
    return _broadcast(keep.cpu(), batch, "keep()", subject, setting, seed)


def _agree(got: Tensor, keep: Tensor, what: str, subject: str, setting: str, seed: int) -> None:
    wrong = got != keep
    if wrong.any():
        b, i, j = (int(x) for x in wrong.nonzero()[0])
        raise fail(
            subject,
            f"{what} disagrees with keep() at {int(wrong.sum())} of {wrong.numel()} positions; "
            f"first: row {b}, query {i}, key {j}: {what} keeps {bool(got[b, i, j])}, keep() says "
            f"{bool(keep[b, i, j])}",
            setting,
            seed,
        )


def _kept_by_additive(t: Tensor, batch: int, what: str, subject: str, setting: str, seed: int):
    """Bool ``(B, Tq, Tk)``: where an additive ``(B|1, H|1, Tq, Tk)`` tensor is above min."""
    if t.ndim != 4 or t.shape[0] not in (1, batch):
        expected = "expected (B|1, H|1, Tq, Tk)"
        raise fail(subject, f"{what} has shape {tuple(t.shape)}, {expected}", setting, seed)
    kept = t.detach().cpu() > torch.finfo(t.dtype).min
    if not torch.equal(kept, kept[:, :1].expand_as(kept)):
        raise fail(subject, f"{what} masks differently per head", setting, seed)
    return kept.expand(batch, -1, -1, -1)[:, 0]


def compare_forms(
    mask: AttentionMask,
    keep: Tensor,
    batch: int,
    device: torch.device | str,
    subject: str,
    setting: str,
    seed: int,
    report: Report,
    gen: torch.Generator,
) -> None:
    """Check that every form of ``mask`` agrees with ``keep (B, Tq, Tk)``.

    Raises:
        AssertionError: naming the form, the first disagreeing position and the setting.
    """
    q_len, k_len = mask.q_len, mask.k_len
    empty = mask.empty_rows(device)
    got_empty = (
        torch.zeros(batch, q_len, dtype=torch.bool)
        if empty is None
        else _broadcast(empty.cpu(), batch, "empty_rows()", subject, setting, seed)[..., 0]
    )
    if not torch.equal(got_empty, ~keep.any(-1)):
        raise fail(subject, "empty_rows() disagrees with keep()", setting, seed)

    expected = torch.where(keep[:, None], 0.0, _MIN)  # (B, 1, Tq, Tk)
    additive = mask.additive(_F32, device)
    dense = torch.zeros(batch, 1, q_len, k_len) if additive is None else additive.cpu()
    if dense.shape[-2:] != (q_len, k_len) or not torch.equal(
        dense.expand(batch, -1, -1, -1)[:, :1], expected
    ):
        raise fail(
            subject, "additive() is not 0 where keep() keeps and finfo.min elsewhere", setting, seed
        )

    bias = torch.randn(1, 2, q_len, k_len, generator=gen)
    with_bias = mask.with_bias(bias).additive(_F32, device)
    want = torch.where(keep[:, None], bias, _MIN)  # (B, 2, Tq, Tk)
    if with_bias is None or not torch.equal(with_bias.cpu().expand(batch, -1, -1, -1), want):
        raise fail(subject, "with_bias(b).additive() is not b where kept, finfo.min elsewhere",
                   setting, seed)  # fmt: skip

    attn_mask, is_causal = mask.sdpa(_F32, device)
    if is_causal:
        if attn_mask is not None:
            raise fail(subject, "sdpa() returned both a mask and is_causal=True", setting, seed)
        top_left = torch.ones(q_len, k_len, dtype=torch.bool).tril()
        top_left = top_left.expand(batch, -1, -1)
        _agree(top_left, keep, "sdpa() is_causal=True", subject, setting, seed)
    else:
        got = (
            torch.ones_like(keep)
            if attn_mask is None
            else _kept_by_additive(attn_mask, batch, "sdpa() attn_mask", subject, setting, seed)
        )
        _agree(got, keep, "sdpa() attn_mask", subject, setting, seed)

    _compare_xformers(mask, keep, batch, device, subject, setting, seed, report)


def _compare_xformers(
    mask: AttentionMask,
    keep: Tensor,
    batch: int,
    device: torch.device | str,
    subject: str,
    setting: str,
    seed: int,
    report: Report,
) -> None:
    ab = xformers_attn_bias()
    if isinstance(ab, str):
        if not any(s == "xformers() bias" for s, _ in report.skipped):
            report.skip("xformers() bias", ab)
        return
    what = "xformers() bias"
    q_len, k_len = mask.q_len, mask.k_len
    bias = mask.xformers(_F32, device)
    if bias is None:
        got = torch.ones_like(keep)
    elif isinstance(bias, Tensor):
        got = _kept_by_additive(bias, batch, what, subject, setting, seed)
    elif isinstance(bias, ab.BlockDiagonalMask):  # describes the batch flattened to (1, B*T)
        if bias.q_seqinfo.seqstart_py[-1] != batch * q_len:
            return  # the kernel falls back to additive(), checked above
        flat = torch.isfinite(bias.materialize((batch * q_len, batch * k_len)).cpu())
        blocks = flat.reshape(batch, q_len, batch, k_len)
        off_diagonal = ~torch.eye(batch, dtype=torch.bool)[:, None, :, None]
        if (blocks & off_diagonal).any():
            raise fail(subject, f"{what} lets a query see another row", setting, seed)
        got = torch.stack([blocks[b, :, b] for b in range(batch)])
    else:
        got = torch.isfinite(bias.materialize((q_len, k_len)).cpu()).expand(batch, -1, -1)
    _agree(got, keep, f"{what} ({type(bias).__name__})", subject, setting, seed)
