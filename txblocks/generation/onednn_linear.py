"""Eager generation's float32 CPU linear layers through oneDNN.

On CPU, ``F.linear`` in float32 runs MKL's products. For the shapes of a decoding step and
of a short prefill they are slow: measured on a 2-core EPYC, a one-row product (the step)
streams GPT-2's head at 13 GB/s and a 32-row one (the prefill) reaches 60-125 GFLOP/s, where
oneDNN, which PyTorch ships for its bf16 products and inductor's frozen linears, streams 35
GB/s and reaches 150-190 GFLOP/s on the same plain (unpacked) weights, in float32 too. Eager
greedy decoding of GPT-2 small went from 21.9 to 33.1 tokens/s; the same tokens came out.

:func:`onednn_linear` is a context in which ``F.linear`` calls that oneDNN can take (float32
CPU tensors, no gradient, plain tensors: a torchao weight keeps its own dispatch) run
``torch.ops.mkldnn._linear_pointwise``, the operator inductor calls for them. Generation
enters it around each prefill and each eager step, never across a ``yield`` (a stream's
caller runs between two) nor around a compiled step (dynamo would trace the mode).
bfloat16 is left alone: aten already runs it through oneDNN.

The compiled step calls the same products as :func:`onednn_linear_op` (``txblocks::onednn_linear``,
an opaque custom operator: inductor lowers ``mkldnn._linear_pointwise`` itself only for frozen
weights) for float32 products of more rows than
:data:`~txblocks.generation.streaming_matvec.MAX_ROWS`; smaller ones stream. At batch 8 that
took GPT-2 small's compiled fp32 decoding from 102 to 190 tokens/s.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensor
from torch.overrides import TorchFunctionMode

__all__ = ["OneDnnLinear", "onednn_available", "onednn_linear", "onednn_linear_op", "onednn_takes"]

_LINEAR = (F.linear, torch._C._nn.linear)
_PLAIN = (Tensor, nn.Parameter)


def onednn_available() -> bool:
    """Whether this PyTorch build has oneDNN and its linear operator."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def onednn_takes(x: Any, weight: Any, bias: Any) -> bool:
    """Whether oneDNN takes ``F.linear(x, weight, bias)`` here: a float32 CPU product of plain
    tensors (or fake ones, while tracing) that needs no gradient, outside CPU autocast."""
    plain = (*_PLAIN, FakeTensor)
    if type(x) not in plain or type(weight) not in plain or type(bias) not in (*plain, type(None)):
        return False
    if x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32:
        return False
    if x.dim() < 2 or weight.dim() != 2 or (bias is not None and bias.dtype != torch.float32):
        return False
    if torch.is_autocast_enabled("cpu"):  # autocast casts F.linear's inputs; not oneDNN's
        return False
    return not (torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bias)))


class OneDnnLinear(TorchFunctionMode):
    """A torch function mode that runs float32 CPU ``F.linear`` through oneDNN (see the
    module's docstring); every other call passes through unchanged."""

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        # a model compiled by its user (model.compile()) is traced under the mode: inductor
        # lowers oneDNN's operator only for frozen weights, so the trace keeps F.linear
        if func in _LINEAR and len(args) >= 2 and not torch.compiler.is_compiling():
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            if onednn_takes(args[0], args[1], bias):
                return torch.ops.mkldnn._linear_pointwise(args[0], args[1], bias, "none", [], "")
        return func(*args, **kwargs)


@contextlib.contextmanager
def onednn_linear(model: nn.Module) -> Iterator[None]:
    """Within it, ``model``'s float32 CPU linear layers run through oneDNN (nothing changes
    for other devices and dtypes, or where oneDNN is missing)."""
    param = next(model.parameters(), None)
    if (param is None or param.device.type != "cpu" or param.dtype != torch.float32
            or not onednn_available()):
        yield
        return
    with OneDnnLinear():
        yield


@torch.library.custom_op("txblocks::onednn_linear", mutates_args=(), device_types="cpu")
def onednn_linear_op(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)`` by oneDNN, as one operator that a compiled graph calls
    as it is: x (..., K), weight (N, K), bias (N,) or None -> (..., N), float32 on CPU."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


@onednn_linear_op.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))
