"""A linear layer with a torchao int8 weight, run by PyTorch's int8 weight-only CPU kernel.

torchao (0.18) computes an ``Int8Tensor`` weight-only product by converting the whole int8
weight back to the activation dtype on every call, which on a CPU reads more memory than the
float product it replaces: decoding gets slower, not faster. PyTorch's
``aten::_weight_int8pack_mm`` reads the int8 weight directly, and with bfloat16 activations
runs at the speed of the int8 bytes (about 3-4x a float32 matrix-vector product here).
:class:`Int8WeightOnlyLinear` keeps torchao's weight (its int8 data and per-row scales) and
routes the product through that kernel; elsewhere (CUDA) it defers to torchao.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Int8WeightOnlyLinear", "use_int8_kernel"]

#: The activation dtype of the CPU kernel: float32 activations take a much slower path.
KERNEL_DTYPE = torch.bfloat16
#: The kernel gives wrong products (and can crash) unless the input width is a multiple of
#: this (measured with torch 2.13: widths 8 and 24 are off by hundreds, 16 and 32 exact).
KERNEL_IN_MULTIPLE = 16


def _has_kernel() -> bool:
    return hasattr(torch.ops.aten, "_weight_int8pack_mm")


class Int8WeightOnlyLinear(nn.Linear):
    """``y = x Wᵀ + b`` with ``W = qdata · scale`` (int8 per output row, torchao ``Int8Tensor``).

    On CPU the product is ``aten::_weight_int8pack_mm`` on bfloat16 activations (the int8
    weight is never expanded to float), cast back to the input's dtype; the bias is added in
    that dtype. Built by :func:`use_int8_kernel` from an ``nn.Linear`` that torchao quantized;
    it shares that layer's parameters.
    """

    def __init__(self, linear: nn.Linear) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        scale = linear.weight.scale.reshape(-1)
        self.register_buffer("kernel_scale", scale.to(KERNEL_DTYPE), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu":
            return F.linear(x, self.weight, self.bias)
        flat = x.reshape(-1, self.in_features).to(KERNEL_DTYPE)
        scale = self.kernel_scale.to(KERNEL_DTYPE)  # a later model.to(dtype) may have cast it
        y = torch.ops.aten._weight_int8pack_mm(flat, self.weight.qdata, scale)
        y = y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        return y if self.bias is None else y + self.bias.to(x.dtype)


def use_int8_kernel(model: nn.Module) -> list[str]:
    """Swap every ``nn.Linear`` whose weight is a torchao ``Int8Tensor`` (weight-only: no
    activation quantization) for an :class:`Int8WeightOnlyLinear`; returns their names.
    Nothing changes where PyTorch lacks the kernel, nor for a layer whose input width the
    kernel cannot take (not a multiple of ``KERNEL_IN_MULTIPLE``): torchao runs those."""
    if not _has_kernel():
        return []
    swapped = []
    for name, module in list(model.named_modules()):
        weight = getattr(module, "weight", None)
        if (name and type(module) is nn.Linear and type(weight).__name__ == "Int8Tensor"
                and module.in_features % KERNEL_IN_MULTIPLE == 0
                and getattr(weight, "act_quant_kwargs", None) is None
                and hasattr(weight, "qdata") and weight.qdata.dtype == torch.int8):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, Int8WeightOnlyLinear(module))
            swapped.append(name)
    return swapped
