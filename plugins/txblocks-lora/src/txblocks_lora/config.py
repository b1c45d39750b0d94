"""The parameters of a LoRA adapter, as a spec writes them.

Spec example::

    adapters:
      - {type: lora, rank: 4, alpha: 8, targets: ["*.ffn.*"]}
"""

from __future__ import annotations

from typing import Annotated

import txblocks
from pydantic import Field

__all__ = ["DEFAULT_TARGETS", "LoRAConfig"]

#: The attention projections, fused (``qkv``) or split (``q``, ``k``, ``v``), and ``out``.
#: A model has one form or the other, so with these defaults a pattern may match nothing;
#: with targets of your own, each pattern must match at least one linear layer.
DEFAULT_TARGETS: tuple[str, ...] = (
    "*.attention.qkv",
    "*.attention.q",
    "*.attention.k",
    "*.attention.v",
    "*.attention.out",
)

Pattern = Annotated[str, Field(min_length=1)]


class LoRAConfig(txblocks.ComponentConfig):
    """LoRA (Hu et al. 2021): y = W x + b + (alpha / rank) · B A dropout(x) on target linears."""

    rank: int = Field(8, ge=1, description="Rank r of the update B A (A: r x in, B: out x r).")
    alpha: float = Field(16.0, gt=0, description="The update is scaled by alpha / rank.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the adapter's input.")
    targets: list[Pattern] = Field(
        default=list(DEFAULT_TARGETS),
        min_length=1,
        description="Shell-style wildcards over module names (model.named_modules()); every "
        "matching nn.Linear gets an adapter. Default: the attention projections.",
    )
    freeze_base: bool = Field(
        True, description="Leave only the adapter parameters trainable (requires_grad)."
    )

    @property
    def scaling(self) -> float:
        """alpha / rank, the factor on B A x."""
        return self.alpha / self.rank
