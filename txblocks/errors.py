"""Errors raised by txblocks. Every message names what is wrong and where."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "BuildError",
    "KernelUnavailableError",
    "PluginError",
    "Problem",
    "QuantizationError",
    "RegistryError",
    "SpecError",
    "TxblocksPluginWarning",
    "did_you_mean",
]


def did_you_mean(found: object, allowed: Iterable[object]) -> str:
    """Return `"; did you mean 'x'?"` when `found` is close to one of `allowed`, else `""`."""
    options = [str(a) for a in allowed]
    matches = difflib.get_close_matches(str(found), options, n=1, cutoff=0.6)
    return f"; did you mean {matches[0]!r}?" if matches else ""


@dataclass(frozen=True)
class Problem:
    """One mistake in a spec: where it is (`block.ffn.type`) and what is wrong."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path or '<spec>'}: {self.message}"


class SpecError(ValueError):
    """A spec is invalid. `problems` lists every mistake with its path."""

    def __init__(self, problems: Sequence[Problem] | str, *, source: str | None = None) -> None:
        if isinstance(problems, str):
            problems = [Problem("", problems)]
        self.problems: list[Problem] = list(problems)
        self.source = source
        header = f"invalid spec{f' {source}' if source else ''}"
        n = len(self.problems)
        lines = [f"{header} ({n} problem{'s' if n != 1 else ''}):"]
        lines += [f"  {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class RegistryError(LookupError):
    """A component is missing from the registry, or registered twice."""


class PluginError(RuntimeError):
    """A plugin broke the plugin contract (e.g. a duplicate registration)."""


class BuildError(ValueError):
    """A valid spec cannot be turned into modules here (e.g. a CUDA-only kernel on CPU)."""


class QuantizationError(BuildError):
    """A model cannot be quantized as asked: an unknown mode, torchao not installed, a model
    already quantized."""


class KernelUnavailableError(RuntimeError):
    """No attention kernel can run a call; the message lists each candidate and its reason."""


class TxblocksPluginWarning(UserWarning):
    """A plugin was skipped because it failed to load."""
