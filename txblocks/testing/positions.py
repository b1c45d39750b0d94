"""Conformance of a positional scheme: embed shapes, relative rotations, relative biases,
score terms from q and k.

Shapes: B batch, T time, H heads, D head_dim, C d_model, Tq/Tk query/key lengths.
"""

from __future__ import annotations

import torch
from torch import Tensor

from txblocks.nn.attention import Attention
from txblocks.nn.positional import PositionalScheme, has_score_bias
from txblocks.testing.report import Report, assert_close, fail, generator, new_seed
from txblocks.testing.score_terms import check_score_bias

__all__ = ["check_positional_scheme"]

#: (Tq, Tk, q_offset) of the bias calls compared with one full (L, L) call.
BIAS_CALLS = ((5, 5, 0), (3, 7, 4), (4, 7, 0), (1, 6, 5), (2, 9, 3))


def check_positional_scheme(
    scheme: PositionalScheme,
    *,
    head_dim: int,
    n_heads: int,
    relative: bool | None = None,
    n_kv_heads: int | None = None,
    d_model: int | None = None,
    max_position: int = 64,
    n_layers: int = 1,
    attention: Attention | None = None,
    seed: int | None = None,
) -> Report:
    """Check each hook a positional scheme implements.

    * ``embed``: ``(1, T)`` and ``(B, T)`` position ids give ``(1, T, C)`` and ``(B, T, C)``,
      finite, and the vector of a position does not depend on where it sits in the call.
    * ``rotary``/``rotate``: q ``(B, T, H, D)`` and k ``(B, T, Hkv, D)`` keep their shape
      and dtype; when relative, ``rotate(q at m) · rotate(k at n)`` depends only on
      ``m - n`` (the same scores after shifting every position).
    * ``attention_bias``: ``(1, H, Tq, Tk)``, finite, and a call with a KV-cache offset
      equals the matching slice of a full call; when relative, the bias depends only on
      the offset ``k - q`` (constant along each diagonal), causal or not.
    * ``score_bias`` (when overridden): ``(B|1, H|1, Tq, Tk)`` in q's dtype, finite, each
      batch row from that row of q and k alone, a KV-cache call equal to the matching slice
      of a full call, a function of q and k (it changes when they do, and gradients reach
      them, finite), for each of ``n_layers`` layers; when relative, for q and k with the
      same vector at every position it depends only on ``k - q``.

    Gradients of any parameters must be finite. Hooks returning None are reported as
    skipped.

    Args:
        scheme: the scheme, e.g. ``registry.config("position", name).build(dims)``.
        head_dim: D.
        n_heads: H, the query heads (and the heads of the bias).
        relative: check the relative properties. None: on for schemes with a rotary
            state, an attention bias or a score term (as RoPE, ALiBi, T5's buckets and
            DeBERTa's disentangled attention are).
        n_kv_heads: heads of k; default ``n_heads``.
        d_model: the expected width of ``embed``; None accepts any.
        max_position: positions stay below this (a learned table's size; dynamic NTK
            scaling changes past ``max_seq_len``).
        n_layers: ``score_bias`` is called with ``layer=0 .. n_layers - 1``.
        attention: the attention layer handed to ``score_bias`` (its projections and
            ``scale``); default a fresh one of width ``d_model`` (or H·D) with the eager
            kernel.
        seed: the seed of the random inputs; random when None.

    Returns:
        A :class:`Report` of the hooks checked and those skipped.

    Raises:
        AssertionError: naming the hook, the property and the setting.

    Example::

        check_positional_scheme(RotaryPositions(16), head_dim=16, n_heads=4)
    """
    seed = new_seed(seed)
    gen = generator(seed)
    subject = f"positional scheme {type(scheme).__name__}"
    report = Report(subject, seed=seed)
    length = min(8, max_position)
    positions = torch.arange(length)[None]  # (1, T)
    was_training = scheme.training
    scheme.eval()
    try:
        rotary = scheme.rotary(positions)
        full = scheme.attention_bias(length, length, 0, False, torch.device("cpu"), torch.float32)
        if relative is None:
            relative = rotary is not None or full is not None or has_score_bias(scheme)
        _check_embed(scheme, positions, max_position, d_model, subject, seed, report, gen)
        if rotary is None:
            report.skip("rotate", "rotary() returned None: the scheme does not rotate q and k")
        else:
            kv = n_kv_heads or n_heads
            _check_rotate(scheme, length, n_heads, kv, head_dim, subject, seed, report, gen)
            if relative:
                _check_rotation_is_relative(
                    scheme, length, n_heads, head_dim, max_position, subject, seed, report, gen
                )
        if full is None:
            report.skip("attention_bias", "attention_bias() returned None")
        else:
            for causal in (False, True):
                _check_bias(scheme, n_heads, max_position, causal, relative, subject, seed, report)
        if not has_score_bias(scheme):
            report.skip("score_bias", "score_bias is not overridden: no score term from q and k")
        else:
            check_score_bias(
                scheme, n_heads=n_heads, n_kv_heads=n_kv_heads or n_heads, head_dim=head_dim,
                d_model=d_model, n_layers=n_layers, attention=attention, relative=relative,
                max_position=max_position, subject=subject, seed=seed, report=report, gen=gen,
            )  # fmt: skip
    finally:
        scheme.train(was_training)
        scheme.zero_grad(set_to_none=True)
    return report


def _check_grads(
    scheme: PositionalScheme, what: str, setting: str, subject: str, seed: int
) -> None:
    for name, param in scheme.named_parameters():
        if param.grad is not None and not torch.isfinite(param.grad).all():
            raise fail(subject, f"{what}: gradient of {name!r} is not finite", setting, seed)


def _check_embed(
    scheme: PositionalScheme, positions: Tensor, max_position: int, d_model: int | None,
    subject: str, seed: int, report: Report, gen: torch.Generator,
) -> None:  # fmt: skip
    out = scheme.embed(positions)
    if out is None:
        report.skip("embed", "embed() returned None: nothing is added to the embeddings")
        return
    length = positions.shape[1]
    setting = f"embed(position_ids (1, {length}))"
    width = d_model if d_model is not None else out.shape[-1]
    if out.shape != (1, length, width) or not torch.isfinite(out).all():
        raise fail(subject, f"embed returned {tuple(out.shape)} (finite: "
                   f"{bool(torch.isfinite(out).all())}), expected finite (1, {length}, {width})",
                   setting, seed)  # fmt: skip
    shift = min(3, max_position - length)
    pair = torch.cat([positions, positions + shift])  # (2, T)
    setting = f"embed(position_ids (2, {length})), row 1 shifted by {shift}"
    both = scheme.embed(pair)
    assert_close(both[0:1] if both is not None else None, out, what="embed of row 0",
                 subject=subject, setting=setting, atol=1e-6, rtol=1e-6, seed=seed)  # fmt: skip
    assert_close(both[1, : length - shift], out[0, shift:], what="embed of a shifted position",
                 subject=subject, setting=setting, atol=1e-6, rtol=1e-6, seed=seed)  # fmt: skip
    if both.requires_grad:  # a learned table
        (both * torch.randn(both.shape, generator=gen)).sum().backward()
        _check_grads(scheme, "embed", setting, subject, seed)
    report.ran.append("embed: shapes, batch rows, position-wise")


def _check_rotate(
    scheme: PositionalScheme, length: int, n_heads: int, n_kv_heads: int, head_dim: int,
    subject: str, seed: int, report: Report, gen: torch.Generator,
) -> None:  # fmt: skip
    state = scheme.rotary(torch.arange(length)[None])
    for heads, what in ((n_heads, "q"), (n_kv_heads, "k")):
        x = torch.randn(2, length, heads, head_dim, generator=gen)
        out = scheme.rotate(x, state)
        setting = f"rotate({what} {tuple(x.shape)})"
        if out.shape != x.shape or out.dtype != x.dtype or not torch.isfinite(out).all():
            raise fail(subject, f"rotate returned {out.dtype} {tuple(out.shape)}, expected "
                       f"finite {x.dtype} {tuple(x.shape)}", setting, seed)  # fmt: skip
    report.ran.append("rotate: shapes")


def _scores(scheme: PositionalScheme, q: Tensor, k: Tensor, positions: Tensor) -> Tensor:
    """(H, T, T) scores of the same q (H, D) and k (H, D) placed at every position."""
    t = positions.shape[-1]
    state = scheme.rotary(positions[None])
    q_rot = scheme.rotate(q.expand(1, t, *q.shape), state)[0]  # (T, H, D)
    k_rot = scheme.rotate(k.expand(1, t, *k.shape), state)[0]
    return torch.einsum("mhd,nhd->hmn", q_rot.double(), k_rot.double())


def _check_rotation_is_relative(
    scheme: PositionalScheme, length: int, n_heads: int, head_dim: int, max_position: int,
    subject: str, seed: int, report: Report, gen: torch.Generator,
) -> None:  # fmt: skip
    q = torch.nn.functional.normalize(torch.randn(n_heads, head_dim, generator=gen), dim=-1)
    k = torch.nn.functional.normalize(torch.randn(n_heads, head_dim, generator=gen), dim=-1)
    base = _scores(scheme, q, k, torch.arange(length))
    for shift in sorted({1, 5, max_position - length} - {0}):
        setting = f"positions {shift}..{shift + length - 1} against 0..{length - 1}"
        shifted = _scores(scheme, q, k, torch.arange(length) + shift)
        assert_close(shifted, base, what="rotated q·k (not relative: it changes when every "
                     "position shifts)", subject=subject, setting=setting, atol=1e-4, rtol=1e-4,
                     seed=seed)  # fmt: skip
    report.ran.append("rotate: q·k depends only on the offset")


def _check_bias(
    scheme: PositionalScheme, n_heads: int, max_position: int, causal: bool, relative: bool,
    subject: str, seed: int, report: Report,
) -> None:  # fmt: skip
    cpu, f32 = torch.device("cpu"), torch.float32
    size = min(9, max_position)
    full = scheme.attention_bias(size, size, 0, causal, cpu, f32)
    setting = f"attention_bias(Tq={size}, Tk={size}, q_offset=0, causal={causal})"
    if full is None or full.shape != (1, n_heads, size, size) or not torch.isfinite(full).all():
        got = None if full is None else (tuple(full.shape), bool(torch.isfinite(full).all()))
        raise fail(subject, f"expected a finite (1, {n_heads}, {size}, {size}) bias, got "
                   f"(shape, finite) {got}", setting, seed)  # fmt: skip
    if full.dtype != f32:
        raise fail(subject, f"bias is {full.dtype}, expected the requested float32", setting, seed)
    for q_len, k_len, offset in BIAS_CALLS:
        if k_len > size:
            continue
        part = scheme.attention_bias(q_len, k_len, offset, causal, cpu, f32)
        setting = f"attention_bias(Tq={q_len}, Tk={k_len}, q_offset={offset}, causal={causal})"
        want = full[..., offset : offset + q_len, :k_len]
        assert_close(part, want, what=f"bias (against rows {offset}..{offset + q_len - 1} of a "
                     f"full {size}x{size} call)", subject=subject, setting=setting, atol=1e-6,
                     rtol=1e-6, seed=seed)  # fmt: skip
    if relative:
        setting = f"attention_bias(Tq={size}, Tk={size}, q_offset=0, causal={causal})"
        assert_close(full[..., 1:, 1:], full[..., :-1, :-1], what="bias at (q+1, k+1) against "
                     "(q, k) (not relative: it changes along a diagonal k - q = const)",
                     subject=subject, setting=setting, atol=1e-6, rtol=1e-6, seed=seed)  # fmt: skip
    if full.requires_grad:
        full.sum().backward()
        _check_grads(scheme, "attention_bias", setting, subject, seed)
    report.ran.append(f"attention_bias: shapes, KV-cache slices{', relative' if relative else ''}"
                      f" (causal={causal})")  # fmt: skip
