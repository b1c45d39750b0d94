"""A plain description of an xformers ``AttentionBias``: what the mask objects hand the kernel.

xformers' bias classes are Python objects that ``torch.compile`` cannot put in a graph, so
masks describe the structure with plain values (a class name, a window, packed lengths) and
the bias object is built only where xformers runs, inside the attention custom op.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["XFormersStructure"]

#: The xformers classes a structure can name, by how they are built.
PLAIN = ("LowerTriangularMask", "LowerTriangularFromBottomRightMask")
WINDOWED = ("LowerTriangularFromBottomRightLocalAttentionMask",)
WITH_TENSOR = ("LowerTriangularMaskWithTensorBias",)
PACKED = ("BlockDiagonalMask", "BlockDiagonalCausalMask", "BlockDiagonalCausalLocalAttentionMask")
KINDS = PLAIN + WINDOWED + WITH_TENSOR + PACKED


@dataclass(frozen=True)
class XFormersStructure:
    """One of xformers' ``attn_bias`` classes, by name, with its plain arguments.

    Args:
        kind: the class name in ``xformers.ops.fmha.attn_bias``.
        window: keys each query sees (the ``Local`` classes).
        seqlens: packed sequence lengths of the batch flattened to ``(1, B*T)``
            (the ``BlockDiagonal`` classes).
    """

    kind: str
    window: int = 0
    seqlens: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown xformers bias kind {self.kind!r}; known: {', '.join(KINDS)}")

    @property
    def packed(self) -> bool:
        """True when the bias describes the batch flattened to ``(1, B*T)``."""
        return self.kind in PACKED

    @property
    def takes_tensor(self) -> bool:
        """True when the class carries an additive tensor (the mask's positional bias)."""
        return self.kind in WITH_TENSOR

    def build(self, tensor: Tensor | None = None, device: torch.device | str = "cpu") -> Any:
        """The ``xformers.ops.fmha.attn_bias`` object (xformers imported here, lazily)."""
        from xformers.ops.fmha import attn_bias as ab

        if self.kind in PLAIN:
            return getattr(ab, self.kind)()
        if self.kind in WINDOWED:
            return getattr(ab, self.kind)(self.window)
        if self.kind in WITH_TENSOR:
            return getattr(ab, self.kind)(tensor)
        device = torch.device(device)
        if device.type == "meta":  # a stand-in for xformers' rules: its lengths stay on the CPU
            device = torch.device("cpu")
        mask = ab.BlockDiagonalMask.from_seqlens(list(self.seqlens), device=device)
        if self.kind == "BlockDiagonalCausalLocalAttentionMask":
            return mask.make_local_attention(self.window)
        return mask.make_causal() if self.kind == "BlockDiagonalCausalMask" else mask
