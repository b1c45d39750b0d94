"""Conformance of a mask strategy: its masks against a brute-force definition.

Shapes: B batch, Tq query length, Tk key length. Query ``i`` sits at absolute
position ``q_offset + i``, measured in key positions.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from txblocks.attention.mask import AttentionMask
from txblocks.attention.strategies import (
    BlockDiagonalStrategy,
    CausalStrategy,
    FullStrategy,
    MaskStrategy,
    PrefixLMStrategy,
    SlidingWindowStrategy,
)
from txblocks.testing.forms import compare_forms, keep_or_all
from txblocks.testing.report import Report, fail, generator, new_seed

__all__ = ["MaskExample", "Reference", "builtin_mask_examples", "check_mask_strategy"]

#: ``reference(q_pos, k_pos, row) -> bool``: may the query at absolute position
#: ``q_pos`` attend to the key at ``k_pos``, in batch row ``row``? Padding and packed
#: sequences are applied by the check; the reference gives the structure alone.
Reference = Callable[[int, int, int], bool]

#: (Tq, Tk) pairs: one query, self-attention, a KV cache, decoding one token.
DEFAULT_LENGTHS: tuple[tuple[int, int], ...] = ((1, 1), (5, 5), (3, 7), (1, 6), (7, 7))
PADDINGS = ("none", "right", "left", "empty_row")


@dataclass(frozen=True)
class MaskExample:
    """A mask strategy and how :func:`check_attention_kernel` calls it.

    Attributes:
        label: the name used in messages and reports.
        strategy: the strategy.
        packed: call it with random packed ``seq_lens``.
        prefix_per_row: call it with random per-row ``prefix_lengths``.
    """

    label: str
    strategy: MaskStrategy
    packed: bool = False
    prefix_per_row: bool = False


def builtin_mask_examples() -> list[MaskExample]:
    """Every built-in mask strategy, with the parameters and options worth covering."""
    return [
        MaskExample("none", FullStrategy()),
        MaskExample("none+packed", FullStrategy(), packed=True),
        MaskExample("causal", CausalStrategy()),
        MaskExample("causal+packed", CausalStrategy(), packed=True),
        MaskExample("sliding_window(1)", SlidingWindowStrategy(1)),
        MaskExample("sliding_window(3)", SlidingWindowStrategy(3)),
        MaskExample("sliding_window(2)+packed", SlidingWindowStrategy(2), packed=True),
        MaskExample("prefix_lm(3)", PrefixLMStrategy(3)),
        MaskExample("prefix_lm+per_row", PrefixLMStrategy(), prefix_per_row=True),
        MaskExample("block_diagonal(causal)+packed", BlockDiagonalStrategy(True), packed=True),
        MaskExample("block_diagonal(full)+packed", BlockDiagonalStrategy(False), packed=True),
    ]


def random_padding(kind: str, batch: int, k_len: int, gen: torch.Generator) -> Tensor | None:
    """Bool ``(B, Tk)``, True = real token: ``none``, ``right``, ``left`` or ``empty_row``.

    ``left`` pads the start of each row (so a causal query may see nothing);
    ``empty_row`` pads row 0 entirely and leaves the others whole.
    """
    if kind == "none":
        return None
    if kind == "empty_row":
        pad = torch.ones(batch, k_len, dtype=torch.bool)
        pad[0] = False
        return pad
    lengths = torch.randint(1, k_len + 1, (batch,), generator=gen)
    lengths[0] = max(1, k_len - 2)  # at least one row padded when Tk > 1
    pos = torch.arange(k_len)
    if kind == "right":
        return pos[None, :] < lengths[:, None]
    return pos[None, :] >= (k_len - lengths)[:, None]


def random_seq_lens(batch: int, total: int, gen: torch.Generator) -> list[list[int]]:
    """Per row, 1 to 3 positive lengths summing to ``total``."""
    rows = []
    for _ in range(batch):
        pieces = int(torch.randint(1, min(3, total) + 1, (1,), generator=gen))
        cuts = torch.randperm(max(total - 1, 1), generator=gen)[: pieces - 1].add(1)
        cuts = sorted(cuts.tolist())
        bounds = [0, *cuts, total]
        rows.append([b - a for a, b in itertools.pairwise(bounds)])
    return rows


def _segment(lengths: Sequence[int], pos: int) -> int:
    end = 0
    for index, length in enumerate(lengths):
        end += length
        if pos < end:
            return index
    return len(lengths)


def brute_force_keep(
    reference: Reference,
    batch: int,
    q_len: int,
    k_len: int,
    q_offset: int,
    key_padding: Tensor | None,
    seq_lens: Sequence[Sequence[int]] | None,
) -> Tensor:
    """Bool ``(B, Tq, Tk)`` from ``reference``, padding and packing, one pair at a time."""
    pad = None if key_padding is None else key_padding.tolist()
    keep = torch.zeros(batch, q_len, k_len, dtype=torch.bool)
    for b, i, j in itertools.product(range(batch), range(q_len), range(k_len)):
        q = q_offset + i
        ok = bool(reference(q, j, b))
        if seq_lens is not None:
            ok = ok and _segment(seq_lens[b], q) == _segment(seq_lens[b], j)
        keep[b, i, j] = ok and (pad is None or pad[b][j])
    return keep


def _offsets(q_len: int, k_len: int) -> list[int | None]:
    """None (the default, bottom-right), top-left 0, and one in between."""
    offsets: list[int | None] = [None]
    for offset in (0, (k_len - q_len) // 2):
        if offset != k_len - q_len and offset not in offsets:
            offsets.append(offset)
    return offsets


def check_mask_strategy(
    strategy: MaskStrategy,
    reference: Reference | None,
    *,
    lengths: Sequence[tuple[int, int]] = DEFAULT_LENGTHS,
    prefix_lengths: Sequence[int] | None = None,
    packed: bool = True,
    device: torch.device | str = "cpu",
    seed: int | None = None,
) -> Report:
    """Check a mask strategy against its brute-force definition and itself.

    For every ``(Tq, Tk)`` in ``lengths``, query offsets (default bottom-right, 0 and
    one between), key padding (none, right, left, a row padded entirely) and, with
    ``packed``, random packed ``seq_lens``: ``strategy(...).keep()`` must equal
    ``reference`` AND the padding AND (when packed) "same sequence". Then every
    other form of the mask must agree with ``keep``: ``empty_rows``, ``additive``
    (also with a bias added), ``sdpa`` (``is_causal`` only when exact) and, when
    xformers is importable, the materialized ``xformers()`` bias. A strategy with
    ``causal = True`` must never keep a later key.

    Args:
        strategy: the strategy under test, e.g. ``registry.config("mask", name).build()``.
        reference: ``reference(q_pos, k_pos, row) -> bool`` on absolute positions; None
            checks only that the forms agree with each other (reported as skipped).
        lengths: the ``(Tq, Tk)`` pairs to try, ``Tq <= Tk``.
        prefix_lengths: per-row prefix lengths passed to every call (their number is
            the batch size; the reference reads them by ``row``). Default: batch 3,
            none passed.
        packed: also call with packed ``seq_lens``; a strategy that raises
            ``ValueError`` or ``NotImplementedError`` for them is reported as skipped.
        device: where the masks are built.
        seed: the seed of the random padding and packing; random when None.

    Returns:
        A :class:`Report` of the settings that ran and those skipped.

    Raises:
        AssertionError: a form disagrees; the message gives the setting (Tq, Tk,
            offset, padding, seq_lens), the first differing query and key, and the seed.

    Example::

        from txblocks.attention.strategies import SlidingWindowStrategy
        check_mask_strategy(SlidingWindowStrategy(3), lambda q, k, row: q - 3 < k <= q)
    """
    seed = new_seed(seed)
    gen = generator(seed)
    subject = f"mask strategy {strategy!r}"
    report = Report(subject, seed=seed)
    if reference is None:
        report.skip("comparison with a definition", "no reference given")
    batch = len(prefix_lengths) if prefix_lengths is not None else 3
    prefix = None if prefix_lengths is None else torch.tensor(list(prefix_lengths))
    for (q_len, k_len), padding in itertools.product(lengths, PADDINGS):
        for q_offset, pack in itertools.product(_offsets(q_len, k_len), (False, True)):
            if pack and not packed:
                continue
            key_padding = random_padding(padding, batch, k_len, gen)
            seq_lens = random_seq_lens(batch, k_len, gen) if pack else None
            offset = k_len - q_len if q_offset is None else q_offset
            shown = "default" if q_offset is None else q_offset
            setting = (
                f"Tq={q_len}, Tk={k_len}, q_offset={shown}, padding={padding}"
                + (f", seq_lens={seq_lens}" if pack else "")
            )
            try:
                mask = strategy(
                    q_len, k_len, key_padding=key_padding, q_offset=q_offset,
                    seq_lens=seq_lens, prefix_lengths=prefix,
                )  # fmt: skip
            except (ValueError, NotImplementedError) as exc:
                if not pack:
                    what = f"raised {type(exc).__name__}: {exc}"
                    raise fail(subject, what, setting, seed) from exc
                if not any(r == "packed seq_lens" for r, _ in report.skipped):
                    report.skip("packed seq_lens", f"{type(exc).__name__}: {exc}")
                continue
            _check_mask(mask, q_len, k_len, offset, subject, setting, seed)
            got = keep_or_all(mask, batch, device, subject, setting, seed)
            if reference is not None:
                want = brute_force_keep(
                    reference, batch, q_len, k_len, offset, key_padding, seq_lens
                )
                _compare_keep(got, want, offset, "keep()", subject, setting, seed)
            if strategy.causal:
                later = torch.arange(k_len)[None, :] > offset + torch.arange(q_len)[:, None]
                if (got & later).any():
                    raise fail(
                        subject, "is declared causal but keeps a key after its query",
                        setting, seed,
                    )  # fmt: skip
            compare_forms(mask, got, batch, device, subject, setting, seed, report, gen)
            report.ran.append(setting)
    return report


def _check_mask(
    mask: AttentionMask, q_len: int, k_len: int, offset: int, subject: str, setting: str, seed: int
) -> None:
    if not isinstance(mask, AttentionMask):
        raise fail(subject, f"returned {type(mask).__name__}, not an AttentionMask", setting, seed)
    if (mask.q_len, mask.k_len, mask.q_offset) != (q_len, k_len, offset):
        raise fail(
            subject,
            f"returned a mask for Tq={mask.q_len}, Tk={mask.k_len}, q_offset={mask.q_offset}",
            setting,
            seed,
        )


def _compare_keep(
    got: Tensor, want: Tensor, offset: int, what: str, subject: str, setting: str, seed: int
) -> None:
    """Raise naming the first (row, query, key) where ``got`` and ``want`` (B, Tq, Tk) differ."""
    wrong = got != want
    if wrong.any():
        b, i, j = (int(x) for x in wrong.nonzero()[0])
        raise fail(
            subject,
            f"{what} differs from the reference at {int(wrong.sum())} of {wrong.numel()} "
            f"(row, query, key) pairs; first: row {b}, query {i} (position {offset + i}), "
            f"key {j}: got {bool(got[b, i, j])}, expected {bool(want[b, i, j])}",
            setting,
            seed,
        )
