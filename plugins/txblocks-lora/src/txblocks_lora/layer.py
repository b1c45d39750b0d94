"""``LoRALinear``: a linear layer plus a trainable low-rank update (Hu et al. 2021).

Shapes: ``...`` any leading dims, I in_features, O out_features, r rank.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from txblocks_lora.config import LoRAConfig

__all__ = ["LoRALinear"]


class LoRALinear(nn.Linear):
    """``y = x Wᵀ + b + (alpha / r) · dropout(x) Aᵀ Bᵀ``.

    It takes over the ``weight`` and ``bias`` parameters of the linear layer it
    replaces (the same objects: tied weights stay tied), so the state_dict keeps
    their names and adds ``lora_A`` (r, I) and ``lora_B`` (O, r). ``A`` starts
    Kaiming-uniform (as ``nn.Linear`` initialises its weight), ``B`` at zero, so a
    fresh adapter changes nothing.

    Args:
        base: the layer to adapt; its parameters are reused, not copied.
        rank: r.
        alpha: the update is scaled by ``alpha / rank``.
        dropout: dropout probability on the adapter's input.

    Attributes:
        config: the :class:`~txblocks_lora.LoRAConfig` that created it, if any.
        merged: whether ``B A · scaling`` is currently folded into ``weight``
            (see :meth:`merge`); a merged layer computes the plain linear map.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        nn.Module.__init__(self)  # not nn.Linear.__init__: the parameters come from ``base``
        if rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {rank}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias  # a Parameter, or None (registered as such)
        self.rank, self.alpha = rank, float(alpha)
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **factory))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        #: The config that created this layer (set by :func:`txblocks_lora.apply_lora`).
        self.config: LoRAConfig | None = None
        self.reset_lora_parameters()

    @property
    def scaling(self) -> float:
        """alpha / rank."""
        return self.alpha / self.rank

    def reset_lora_parameters(self) -> None:
        """A ~ Kaiming-uniform(a=√5), B = 0: the update starts at zero."""
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def delta_weight(self) -> Tensor:
        """``B A · scaling``, shape (O, I): what :meth:`merge` adds to ``weight``."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: Tensor) -> Tensor:
        out = F.linear(x, self.weight, self.bias)  # (..., I) -> (..., O)
        if self.merged:
            return out
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)  # (..., O)
        return out + update * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into ``weight``; forward is then the plain linear map."""
        if not self.merged:
            self.weight.add_(self.delta_weight().to(self.weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo :meth:`merge` (subtract the same update)."""
        if self.merged:
            self.weight.sub_(self.delta_weight().to(self.weight.dtype))
            self.merged = False

    def extra_repr(self) -> str:
        p = self.lora_dropout.p if isinstance(self.lora_dropout, nn.Dropout) else 0.0
        return (f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha:g}, "
                f"dropout={p:g}, merged={self.merged}")
