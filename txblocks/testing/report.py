"""What a conformance check ran and skipped, and the helpers that compare tensors."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["Report", "assert_close", "fail"]


@dataclass
class Report:
    """The outcome of one conformance check that passed.

    Attributes:
        subject: what was checked (``"attention kernel 'sdpa'"``).
        ran: one line per setting that ran and passed.
        skipped: ``(setting, reason)`` for each setting that did not run.
        seed: the seed of the random inputs; pass it back as ``seed=`` to replay them.

    Example::

        report = check_attention_kernel(MyKernel())
        print(report)              # a summary, then every skipped setting with its reason
        assert not report.skipped  # when the kernel should support everything
    """

    subject: str
    ran: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seed: int | None = None

    def skip(self, setting: str, reason: str) -> None:
        """Record that ``setting`` did not run, and why."""
        self.skipped.append((setting, reason))

    def __str__(self) -> str:
        seed = "" if self.seed is None else f" (seed={self.seed})"
        lines = [f"{self.subject}: {len(self.ran)} ran, {len(self.skipped)} skipped{seed}"]
        by_reason: dict[str, list[str]] = {}
        for setting, reason in self.skipped:
            by_reason.setdefault(reason, []).append(setting)
        for reason, settings in by_reason.items():
            more = f" and {len(settings) - 1} more" if len(settings) > 1 else ""
            lines.append(f"  skipped {settings[0]}{more}: {reason}")
        return "\n".join(lines)


def fail(subject: str, what: str, setting: str, seed: int | None = None) -> AssertionError:
    """An ``AssertionError`` naming the subject, what went wrong and the setting."""
    replay = "" if seed is None else f"; replay with seed={seed}"
    return AssertionError(f"{subject}: {what} [{setting}]{replay}")


def max_diff(got: Tensor, want: Tensor) -> float:
    """The largest ``|got - want|`` in float64 (``inf`` where only one side is finite)."""
    diff = (got.detach().double() - want.detach().double()).abs()
    return float(diff.nan_to_num(nan=float("inf")).max()) if diff.numel() else 0.0


def assert_close(
    got: Tensor | None,
    want: Tensor | None,
    *,
    what: str,
    subject: str,
    setting: str,
    atol: float,
    rtol: float,
    seed: int | None = None,
) -> None:
    """Raise an ``AssertionError`` naming ``what`` and the max difference unless close.

    Args:
        got: the tensor under test.
        want: the reference (compared in float64 after both are upcast).
        what: the name of the quantity (``"output"``, ``"grad k"``).
        subject: the component being checked.
        setting: the settings of this comparison, for the message.
        atol: absolute tolerance.
        rtol: relative tolerance, times ``|want|``.
        seed: the seed of the inputs, for the message.

    Raises:
        AssertionError: a missing tensor, a shape mismatch, a NaN, or a difference
            larger than ``atol + rtol * |want|``.
    """
    if got is None or want is None:
        missing = "the checked component" if got is None else "the reference"
        raise fail(subject, f"{what} is missing (None) from {missing}", setting, seed)
    if got.shape != want.shape:
        raise fail(
            subject,
            f"{what} has shape {tuple(got.shape)}, expected {tuple(want.shape)}",
            setting,
            seed,
        )
    g, w = got.detach().double(), want.detach().double()
    if torch.isnan(g).any() and not torch.isnan(w).any():
        raise fail(subject, f"{what} contains NaN", setting, seed)
    bad = (g - w).abs() > atol + rtol * w.abs()
    if bad.any():
        index = tuple(int(i) for i in bad.nonzero()[0])
        raise fail(
            subject,
            f"{what} differs: max |diff| {max_diff(g, w):.3g} (atol {atol:g}, rtol {rtol:g}); "
            f"first at index {index}: got {float(g[index]):.6g}, expected {float(w[index]):.6g}",
            setting,
            seed,
        )


def new_seed(seed: int | None) -> int:
    """``seed``, or a fresh one drawn from the global generator when None."""
    return secrets.randbelow(2**31 - 1) if seed is None else int(seed)


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``."""
    return torch.Generator().manual_seed(seed)
