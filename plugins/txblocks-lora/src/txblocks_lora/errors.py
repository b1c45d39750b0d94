"""The error of this plugin."""

from __future__ import annotations

import txblocks

__all__ = ["LoRAError"]


class LoRAError(txblocks.BuildError):
    """A LoRA adapter cannot be applied, merged, saved or loaded; the message says why.

    A :class:`txblocks.BuildError` (hence a ``ValueError``), so ``txblocks.build``
    callers catch it like any other build problem.
    """
