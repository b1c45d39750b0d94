"""``auto``: the fastest kernel that can run each call, and why the others cannot.

Shapes: B batch, Tq/Tk query/key length, H query heads, Hkv kv heads, D head_dim.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from txblocks.attention.kernel import AttentionCall, AttentionKernel, check_shapes
from txblocks.attention.mask import AttentionMask
from txblocks.errors import KernelUnavailableError

__all__ = ["AutoKernel"]


class AutoKernel(AttentionKernel):
    """Dispatch each call to the fastest candidate whose ``why_not`` is empty.

    Candidates are tried by their :meth:`~AttentionKernel.cost_rank` for the call (lower
    first), ties by ``priority``: SDPA for no mask, an exact causal mask and decoding
    steps; xformers (on CUDA) for the structures it runs without a dense mask and the
    tensor biases it takes as they are; SDPA for what needs a dense mask; the eager
    reference last (softcap). The measured reasons are in docs/gpu.md.

    Args:
        candidates: the kernels to choose from.

    Raises:
        ValueError: no candidates.
    """

    name = "auto"
    priority = -1

    def __init__(self, candidates: Iterable[AttentionKernel]) -> None:
        self.candidates = sorted(candidates, key=lambda kernel: -kernel.priority)
        if not self.candidates:
            raise ValueError("AutoKernel needs at least one candidate kernel")

    def why_not_on(self, device: torch.device) -> list[str]:
        reasons = {kernel.name: kernel.why_not_on(device) for kernel in self.candidates}
        if all(reasons.values()):
            return [_explain(f"no attention kernel can run on {device}", reasons)]
        return []

    def why_not(self, call: AttentionCall) -> list[str]:
        try:
            self.select(call)
        except KernelUnavailableError as exc:
            return [str(exc)]
        return []

    def select(self, call: AttentionCall) -> AttentionKernel:
        """The kernel that runs ``call``.

        Raises:
            KernelUnavailableError: no candidate can; the message lists each
                candidate with its reasons.
        """
        reasons: dict[str, list[str]] = {}
        ranked = sorted(self.candidates, key=lambda kernel: kernel.cost_rank(call))  # stable
        for kernel in ranked:
            reasons[kernel.name] = kernel.why_not(call)
            if not reasons[kernel.name]:
                return kernel
        header = f"no attention kernel can run this call ({call})"
        raise KernelUnavailableError(_explain(header, reasons))

    def __call__(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: AttentionMask,
        *,
        scale: float,
        dropout: float = 0.0,
        softcap: float | None = None,
    ) -> Tensor:
        check_shapes(q, k, v, mask)
        kernel = self.select(AttentionCall.of(q, k, mask, dropout, softcap, v=v))
        return kernel.attend(q, k, v, mask, scale=scale, dropout=dropout, softcap=softcap)

    def __repr__(self) -> str:
        return f"AutoKernel([{', '.join(kernel.name for kernel in self.candidates)}])"


def _explain(header: str, reasons: dict[str, list[str]]) -> str:
    lines = [f"{header}:"]
    for name, why in reasons.items():
        lines.append(f"  {name}: {'; '.join(why) if why else 'available'}")
    return "\n".join(lines)
