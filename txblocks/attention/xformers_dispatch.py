"""Asking xformers which of its operators can run a call, forward and backward.

txblocks never restates xformers' rules: it hands the exact inputs it would pass to
``memory_efficient_attention`` to xformers' own priority list
(``fmha.dispatch._dispatch_fw_priority_list``) and to each operator's
``not_supported_reasons``, and pairs the backward as xformers' autograd function does
(the backward operators of the same modules; with dropout or packed sequences, the one
that reads the forward's random state or log-sum-exp format).

Off CUDA (on a CPU-only machine, in tests) the same questions are asked of CPU tensors,
with the rules a CUDA build of torch uses. Then only the reasons about the device itself
are set aside: the tensors are not on a GPU, the GPU is not an A100 or newer, the operator
was not built for this machine.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Verdict", "ask", "device_reasons", "operator"]

#: The beginnings of xformers' reasons that are about the device, not the call.
_DEVICE_REASONS = (
    "device=",
    "bf16 is only supported on A100+",
    "operator wasn't built",
    "requires device with capability",
    "xFormers wasn't build with CUDA support",
)


def device_reasons(reasons: Sequence[str]) -> list[str]:
    """The reasons among ``reasons`` that are about the device rather than the call."""
    return [r for r in reasons if r.startswith(_DEVICE_REASONS)]


@dataclass(frozen=True)
class Verdict:
    """xformers' answer for one call: the operators that run it, or why none can.

    Attributes:
        forward: ``NAME`` of the forward operator, or None.
        backward: ``NAME`` of the backward operator (None when no gradient is needed or
            none can run).
        reasons: empty when the call can run; else ``"<op NAME>: <reason>; ..."`` lines for
            every operator tried.
    """

    forward: str | None
    backward: str | None
    reasons: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.reasons


@contextlib.contextmanager
def _cuda_rules() -> Iterator[None]:
    """On a CPU-only build of torch, let xformers list the operators of a CUDA build."""
    if torch.version.cuda or torch.version.hip:
        yield
        return
    torch.version.cuda = "12.8"  # type: ignore[misc]
    try:
        yield
    finally:
        torch.version.cuda = None  # type: ignore[misc]


def _refusals(op: Any, inp: Any) -> list[str]:
    reasons = list(op.not_supported_reasons(inp))
    if inp.query.device.type != "cuda":
        reasons = [r for r in reasons if r not in device_reasons(reasons)]
    return reasons


def _first(ops: Sequence[Any], inp: Any, stage: str) -> tuple[Any, list[str]]:
    """The first operator of ``ops`` that runs ``inp``, or None and every refusal."""
    refusals = []
    for op in ops:
        reasons = _refusals(op, inp)
        if not reasons:
            return op, []
        refusals.append(f"{stage} {op.NAME}: {'; '.join(reasons)}")
    if not ops:
        refusals.append(f"{stage}: xformers lists no operator for this call")
    return None, refusals


def _backward_of(op: Any) -> Any:
    """The backward operator of the module that defines forward operator ``op``, if any."""
    return getattr(sys.modules[op.__module__], "BwOp", None)


def ask(inp: Any, needs_grad: bool) -> Verdict:
    """Which xformers operators run ``inp`` (an ``xformers.ops.fmha.Inputs``).

    Args:
        inp: the exact inputs txblocks would pass, in xformers' layout.
        needs_grad: also find a backward operator, as ``memory_efficient_attention`` does
            when an input requires grad.
    """
    from xformers.ops.fmha import attn_bias, dispatch

    with _cuda_rules():
        forward_ops = list(dispatch._dispatch_fw_priority_list(inp, needs_grad))
    forward, reasons = _first(forward_ops, inp, "forward")
    if forward is None or not needs_grad:
        return Verdict(getattr(forward, "NAME", None), None, tuple(reasons))
    backward_ops = [bw for bw in map(_backward_of, forward_ops) if bw is not None]
    if inp.p:  # xformers pairs the backward that reads this forward's random state
        backward_ops = [bw for bw in backward_ops if bw is _backward_of(forward)]
    varlen = isinstance(inp.attn_bias, attn_bias.VARLEN_BIASES)
    if varlen and inp.attn_bias.q_seqinfo.seqstart.shape[0] > 2:  # the log-sum-exp format
        backward_ops = [bw for bw in backward_ops
                        if bw.VARLEN_LSE_PACKED == forward.VARLEN_LSE_PACKED]  # fmt: skip
    backward, reasons = _first(backward_ops, inp, "backward")
    if backward is None:
        reasons = [f"forward {forward.NAME} runs it, but no backward operator does:", *reasons]
    return Verdict(forward.NAME, getattr(backward, "NAME", None), tuple(reasons))


def operator(name: str) -> Any:
    """The xformers operator class whose ``NAME`` is ``name`` (from xformers' registry)."""
    from xformers.ops import fmha  # noqa: F401  (registers the attention operators)
    from xformers.ops.common import OPERATORS_REGISTRY

    for op in OPERATORS_REGISTRY:
        if getattr(op, "NAME", None) == name:
            return op
    raise KeyError(f"xformers has no operator named {name!r}")
