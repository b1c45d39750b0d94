"""The matrix-vector products of a CPU decoding step, compiled as streaming reductions.

A decoding step multiplies one token per row by every weight matrix: matrix-vector
products, bound by how fast the weights stream from memory. On a 2-core EPYC, aten's
products (MKL / oneDNN) stream GPT-2's matrices at 13-19 GB/s, while a plain reduction
reads memory at about 30 GB/s. Written as ``(x · W).sum(-1)``, the product is such a
reduction, and inductor compiles it into one vectorized loop over each weight row that
reads memory at close to that rate (measured: 28 GB/s in fp32, 26 GB/s in bf16, against
13.5 and 12.7 for ``F.linear`` on the same matrices).

:class:`StreamingMatVec` is an inductor graph pass (``pre_grad_custom_pass``) that rewrites
``F.linear`` calls on CPU with at most :data:`MAX_ROWS` rows (:data:`MAX_ROWS_CONVERTED` for
bf16 and fp16 weights) that way, accumulating in float32 as the library kernels do; likewise
PyTorch's int8 weight-only product (the int8 bytes read once, converted in registers) and
SDPA for a one-position query (its formula as reductions, which inductor fuses with the rest
of the layer). float32 products of more rows go to oneDNN
(:func:`~txblocks.generation.onednn_linear.onednn_linear_op`), about twice as fast there as
the MKL products that inductor would call. Only the compiled decoding step installs the
pass; weights that are tensor subclasses (torchao) keep their own dispatch.

Shapes: R rows (batch × tokens), K in features, N out features.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import torch
import torch._inductor.inductor_prims  # registers prims.inductor_force_stride_order
import torch.nn.functional as F
from torch import Tensor, fx
from torch._inductor.custom_graph_pass import CustomGraphPass
from torch._subclasses.fake_tensor import FakeTensor

from txblocks.generation import onednn_linear
from txblocks.generation.onednn_linear import onednn_available, onednn_takes

__all__ = ["MAX_ROWS", "MAX_ROWS_CONVERTED", "StreamingMatVec", "max_rows", "streaming_attention",
           "streaming_int8_mm", "streaming_linear"]

#: float32 linear layers with at most this many rows become reductions: batch 1 to 4 of a
#: decoding step. Each weight row is multiplied by every input row while it is loaded, so the
#: weights stream once (GPT-2 small's compiled decoding on a 2-core EPYC, batch 2 / 4: 93.2 /
#: 154.8 tok/s, against 55.4 reading the weights once per row and 119.5 with oneDNN's
#: products; at 8 rows oneDNN's are faster: 31.6 against 38.8 ms for GPT-2's 49 products).
MAX_ROWS = 4
#: The same for weights converted to float32 inside the loop (bf16, fp16, int8): batch 1 and
#: 2, one input row at a time (GPT-2 bf16, batch 2: 169 tok/s, 149 with the weight rows
#: outside; at 4 rows aten's bf16 products, oneDNN's, are faster than either).
MAX_ROWS_CONVERTED = 2

_LINEAR = (F.linear, torch._C._nn.linear)
_SDPA = (F.scaled_dot_product_attention, torch._C._nn.scaled_dot_product_attention)
_INT8_MM = (torch.ops.aten._weight_int8pack_mm, torch.ops.aten._weight_int8pack_mm.default)


def streaming_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)`` as a broadcast product summed over K, in float32:
    x (..., K), weight (N, K), bias (N,) -> (..., N) in x's dtype."""
    y = _times(x, weight)
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def _times(x: Tensor, weight: Tensor) -> Tensor:
    """x (..., K) times weight (N, K) -> (..., N) in float32.

    float32 weights: computed as (N, R), so that inductor's loops run over the weight rows
    outside and the R input rows inside, and each weight row is read from memory once
    whatever R (in (R, N) order it is read R times: batch 2 took twice batch 1's time).
    Converted weights (see :data:`MAX_ROWS_CONVERTED`): in (R, N) order."""
    if weight.dtype != torch.float32:
        return (_stored(x).unsqueeze(-2) * weight.float()).sum(-1)
    rows = _stored(x.reshape(-1, x.shape[-1]))  # (R, K)
    y = (weight.unsqueeze(-2) * rows).sum(-1)  # (N, R)
    return y.t().reshape(*x.shape[:-1], weight.shape[0])


def max_rows(weight_dtype: torch.dtype) -> int:
    """The most rows of a product with weights of ``weight_dtype`` that the pass streams."""
    return MAX_ROWS if weight_dtype == torch.float32 else MAX_ROWS_CONVERTED


def _stored(x: Tensor) -> Tensor:
    """``x`` in float32, stored before the loops that read it: inductor would otherwise
    recompute the ops that made it (a norm, an activation) inside every reduction over the
    weights (measured: 4.9 GB/s instead of 22 on GPT-2's layers)."""
    xf = x.float().contiguous()
    return torch.ops.prims.inductor_force_stride_order.default(xf, xf.stride())


def streaming_int8_mm(x: Tensor, weight: Tensor, scales: Tensor) -> Tensor:
    """``aten._weight_int8pack_mm(x, weight, scales)`` (int8 weight-only,
    :class:`~txblocks.int8_linear.Int8WeightOnlyLinear`) as a reduction that reads the int8
    bytes once: x (R, K), weight (N, K) int8, scales (N,) -> (R, N) in x's dtype."""
    return (_times(x, weight) * scales.float()).to(x.dtype)


def streaming_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None,
                        dropout_p: float = 0.0, is_causal: bool = False,
                        scale: float | None = None, enable_gqa: bool = False) -> Tensor:
    """``F.scaled_dot_product_attention`` for a query of one position, as reductions (no
    dropout, no ``is_causal``): q (B, H, 1, D), k and v (B, Hkv, L, D), attn_mask additive
    or boolean (B|1, H|1, 1, L) -> (B, H, 1, D), softmax in float32. The H / Hkv query heads
    of a group share their key head, as with ``enable_gqa``."""
    batch, heads, _, dim = q.shape
    kv_heads, length = k.shape[1], k.shape[2]
    group = heads // kv_heads
    scale = dim**-0.5 if scale is None else scale
    qf = _stored(q).view(batch, kv_heads, group, 1, dim)
    scores = (qf * k.float().unsqueeze(2)).sum(-1) * scale  # (B, Hkv, G, L)
    if attn_mask is not None:
        mask = attn_mask.expand(-1, heads, -1, -1) if attn_mask.shape[1] == 1 else attn_mask
        mask = mask.reshape(mask.shape[0], kv_heads, group, length)
        scores = (scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool
                  else scores + mask.float())
    probs = scores.softmax(-1).unsqueeze(-1)  # (B, Hkv, G, L, 1)
    out = (probs * v.float().unsqueeze(2)).sum(-2)  # (B, Hkv, G, D)
    return out.reshape(batch, heads, 1, dim).to(q.dtype)


def _value(node: Any) -> Tensor | None:
    """The plain tensor a traced node stands for; None for anything else, tensor subclasses
    (a torchao ``Int8Tensor`` weight) included: their own dispatch does the product."""
    value = node.meta.get("example_value") if isinstance(node, fx.Node) else None
    return value if isinstance(value, FakeTensor) else None


def _streamable(node: fx.Node) -> bool:
    """A CPU float linear (or int8 weight-only product) of at most :func:`max_rows` rows, with
    its shapes known."""
    if node.op != "call_function" or node.target not in _LINEAR + _INT8_MM or node.kwargs:
        return False
    x, weight = (_value(a) for a in node.args[:2])
    if x is None or weight is None or x.device.type != "cpu":
        return False
    if not x.dtype.is_floating_point or x.dtype == torch.float64:
        return False
    return math.prod(x.shape[:-1]) <= max_rows(weight.dtype)


def _onednn_product(node: fx.Node) -> bool:
    """A float32 CPU linear that oneDNN takes (more than MAX_ROWS rows: fewer stream)."""
    if node.op != "call_function" or node.target not in _LINEAR or node.kwargs:
        return False
    args = (*node.args, None)[:3]
    x, weight, bias = (_value(a) for a in args)
    if x is None or weight is None or (bias is None and args[2] is not None):
        return False
    return onednn_available() and onednn_takes(x, weight, bias)


def _one_query_attention(node: fx.Node) -> bool:
    """A CPU SDPA call of one query position, without dropout or ``is_causal``."""
    if node.op != "call_function" or node.target not in _SDPA or len(node.args) != 3:
        return False
    q, k, mask = _value(node.args[0]), _value(node.args[1]), node.kwargs.get("attn_mask")
    if q is None or k is None or q.device.type != "cpu" or q.shape[-2] != 1:
        return False
    if node.kwargs.get("dropout_p", 0.0) or node.kwargs.get("is_causal", False):
        return False
    mask = _value(mask) if mask is not None else None
    return mask is None or (mask.ndim == 4 and mask.shape[-2] == 1)


class StreamingMatVec(CustomGraphPass):
    """Inductor pre-grad pass: small-row CPU ``F.linear`` -> :func:`streaming_linear` (and
    the int8 weight-only kernel -> :func:`streaming_int8_mm`), larger float32 ones ->
    :func:`~txblocks.generation.onednn_linear.onednn_linear_op`, one-query CPU SDPA ->
    :func:`streaming_attention`."""

    def __call__(self, graph: fx.Graph) -> None:
        for node in list(graph.nodes):
            if _streamable(node):
                int8 = node.target in _INT8_MM
                self._replace(graph, node, streaming_int8_mm if int8 else streaming_linear)
            elif _onednn_product(node):
                self._replace(graph, node, torch.ops.txblocks.onednn_linear.default)
            elif _one_query_attention(node):
                self._replace(graph, node, streaming_attention)

    @staticmethod
    def _replace(graph: fx.Graph, node: fx.Node, target: Any) -> None:
        with graph.inserting_before(node):
            new = graph.call_function(target, tuple(node.args), dict(node.kwargs))
        new.meta.update(node.meta)
        node.replace_all_uses_with(new)
        graph.erase_node(node)

    def uuid(self) -> Any:
        """Changes with this file and the oneDNN one, so inductor's cache never reuses another
        version's code."""
        sources = Path(__file__).read_bytes() + Path(onednn_linear.__file__).read_bytes()
        return hashlib.sha256(sources).hexdigest()

