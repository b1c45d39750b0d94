"""xformers ``memory_efficient_attention``: the fast kernel for structured masks on CUDA.

xformers is optional (the ``cuda`` extra) and imported only when this kernel is asked.

Shapes: B batch, Tq/Tk query/key length, H query heads, Hkv = G kv heads (groups),
R = H / G query heads per group, D head_dim.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from txblocks.attention.kernel import SHORT_QUERY, AttentionCall, AttentionKernel
from txblocks.attention.mask import AttentionMask
from txblocks.attention.xformers_bias import XFormersStructure

__all__ = ["XFormersKernel", "XFormersPlan"]

_INSTALL_HINT = "install it with `pip install 'txblocks[cuda]'` (see docs/gpu.md)"

#: Whether xformers can be imported, looked up once at import: `auto` asks on every call, and
#: a lookup per call costs file-system stats (and a functools cache would trip up dynamo).
_INSTALLED = importlib.util.find_spec("xformers") is not None


@torch.compiler.assume_constant_result
def _device_problem(device: str) -> str | None:
    """:func:`_cuda_problem`, asked once and kept as a constant by ``torch.compile``."""
    return _cuda_problem(device)


@functools.lru_cache(maxsize=None)
def _cuda_problem(device: str) -> str | None:
    """Run a tiny attention on ``device``; say why xformers cannot, or None when it can."""
    try:
        from xformers.ops import memory_efficient_attention
    except Exception as exc:  # not installed, or broken against this torch
        return f"xformers failed to import ({type(exc).__name__}: {exc}); {_INSTALL_HINT}"
    try:
        x = torch.randn(1, 8, 1, 16, device=device, dtype=torch.float16)
        with torch.no_grad():
            memory_efficient_attention(x, x, x)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return (
            f"xformers' CUDA kernels cannot run on {device} ({type(exc).__name__}: {first}); "
            "run `txblocks doctor` or `python -m xformers.info`, and install an xformers build "
            f"matching torch {torch.__version__} ({_INSTALL_HINT}), or use kernel 'sdpa'"
        )
    return None


def padded_bias(bias: Tensor) -> Tensor:
    """``bias (..., Tq, Tk)`` on memory whose rows hold a multiple of 8 elements, as
    ``(..., Tq, Tk + pad)``: xformers needs its bias strides aligned to 16 bytes."""
    return F.pad(bias, (0, -bias.shape[-1] % 8))


@dataclass(frozen=True)
class XFormersPlan:
    """How one call reaches xformers, as xformers accepted it.

    Attributes:
        structure: the xformers bias class (None: a tensor bias or nothing).
        folded: True when a structure was folded into a dense tensor bias because no
            operator (forward, or backward when gradients are needed) took it as a class.
        layout: ``heads``, ``groups`` or ``expanded`` (see :mod:`txblocks.attention.xformers_op`).
        forward_op / backward_op: xformers operator names ("" for no backward).
    """

    structure: XFormersStructure | None
    folded: bool
    layout: str
    forward_op: str
    backward_op: str


class _Key(NamedTuple):
    """Everything xformers' verdict depends on, as plain values (hashable, and constants
    that ``torch.compile`` can hand :func:`_plan`)."""

    dtype: torch.dtype
    device: str
    q: tuple[tuple[int, ...], tuple[int, ...]]  # shape, stride
    k: tuple[tuple[int, ...], tuple[int, ...]]
    v: tuple[tuple[int, ...], tuple[int, ...]]
    structure: tuple[str, int, tuple[int, ...]] | None  # an XFormersStructure's fields
    bias: tuple[tuple[int, ...], tuple[int, ...], bool] | None  # shape, stride, requires grad
    dense: tuple[tuple[int, ...], tuple[int, ...], bool] | None  # the folded form, same
    dropout: float
    scale: float
    needs_grad: bool


def _form(t: Tensor | None, *, grad: bool = False) -> tuple | None:
    return None if t is None else (tuple(t.shape), tuple(t.stride()), grad and t.requires_grad)


def _standin(form: tuple, dtype: torch.dtype, device: torch.device) -> Tensor:
    """An empty tensor with the shape, strides and requires-grad of ``form``: what xformers'
    rules look at. On the GPU itself where one is present (so that its capability counts),
    else on the meta device, which allocates nothing."""
    shape, stride, *grad = form
    size = 1 + sum((n - 1) * s for n, s in zip(shape, stride, strict=True)) if all(shape) else 0
    flat = torch.empty(size, dtype=dtype, device=device)
    return flat.as_strided(shape, stride).requires_grad_(bool(grad and grad[0]))


@torch.compiler.assume_constant_result
def _plan(*key: object) -> XFormersPlan | tuple[str, ...]:
    """:func:`_plan_cached` of ``_Key(*key)``; dynamo calls it at trace time and keeps the
    answer as a constant, so no xformers code enters a compiled graph."""
    return _plan_cached(_Key(*key))


@functools.lru_cache(maxsize=4096)
def _plan_cached(key: _Key) -> XFormersPlan | tuple[str, ...]:
    """The first form of the call that xformers accepts, or xformers' reasons for each form."""
    from txblocks.attention.xformers_dispatch import ask
    from txblocks.attention.xformers_op import xformers_inputs

    device = torch.device(key.device)
    if device.type != "cuda" or not torch.cuda.is_available():
        device = torch.device("meta")
    q, k, v = (_standin(form, key.dtype, device) for form in (key.q, key.k, key.v))
    structure = None if key.structure is None else XFormersStructure(*key.structure)
    q.requires_grad_(key.needs_grad)
    bias = None if key.bias is None else _standin(key.bias, key.dtype, device)
    dense = None if key.dense is None else _standin(key.dense, key.dtype, device)
    grouped = q.shape[2] != k.shape[2]
    layouts = ("groups", "expanded") if grouped else ("heads",)
    forms = [(structure, bias, False)]
    if structure is not None:  # the same mask as one dense tensor: every operator takes it
        forms.append((None, dense, True))
    reasons: list[str] = []
    for (structure, tensor, folded), layout in ((f, lay) for f in forms for lay in layouts):
        inp = xformers_inputs(q, k, v, tensor, structure, layout, key.scale, key.dropout)
        verdict = ask(inp, key.needs_grad)
        if verdict.ok:
            return XFormersPlan(structure, folded, layout, str(verdict.forward),
                                verdict.backward or "")  # fmt: skip
        form = "a dense tensor bias" if folded else (structure.kind if structure else "no class")
        reasons.append(f"with {form}, {layout} layout: " + " | ".join(verdict.reasons))
    return tuple(reasons)


class XFormersKernel(AttentionKernel):
    """xformers ``memory_efficient_attention`` (CUDA; forward and backward).

    Rabe & Staats 2021, "Self-attention Does Not Need O(n²) Memory"; Dao et al.
    2022, "FlashAttention". Whether it can run a call is xformers' own answer: the exact
    inputs are put to its operators' ``not_supported_reasons`` (the backward operators'
    too when gradients are needed). Masks become xformers' ``AttentionBias`` classes
    where one is exact; grouped K/V heads go as xformers' 5-D layout where the operators
    take it (forward only) and are copied to the query heads where they do not (the
    backward); a structure the operators refuse is folded with any bias into one dense
    tensor, padded to 16-byte rows. The call runs as the ``txblocks::xformers_attention``
    custom op, which ``torch.compile`` traces. See
    https://facebookresearch.github.io/xformers/components/ops.html
    """

    name = "xformers"
    priority = 100

    def why_not_on(self, device: torch.device) -> list[str]:
        device = torch.device(device)
        if device.type != "cuda":
            reasons = [
                f"xformers runs on CUDA GPUs only, and this model is on {device.type!r}; "
                "use kernel 'sdpa' (or 'auto', which picks the best kernel available)"
            ]
            if not _INSTALLED:
                reasons.append(f"xformers is not installed; {_INSTALL_HINT}")
            return reasons
        if device.index is None and torch.cuda.is_available():
            device = torch.device("cuda", torch.cuda.current_device())
        problem = _device_problem(str(device))
        return [problem] if problem else []

    def why_not(self, call: AttentionCall) -> list[str]:
        reasons = super().why_not(call)
        if call.softcap is not None:
            reasons.append(
                "softcap (logit soft-capping) is not supported by xformers "
                "memory_efficient_attention; use kernel 'eager'"
            )
        if not _INSTALLED or (call.device.type == "cuda" and not torch.cuda.is_available()):
            return reasons  # why_not_on says why
        plan = self.plan(call)
        return reasons + (list(plan) if isinstance(plan, tuple) else [])

    def plan(self, call: AttentionCall) -> XFormersPlan | tuple[str, ...]:
        """How xformers runs ``call``, or xformers' reasons why it cannot (device reasons set
        aside off CUDA: there the answer is what a GPU would say)."""
        return _plan(*_key(call, *_parts(call.mask, call.dtype, call.device, call.batch)))

    def cost_rank(self, call: AttentionCall) -> int:
        """20 where xformers runs the mask as a structure or takes its tensor bias as it is
        (sliding windows, packed sequences, positional biases); 40 where SDPA is as fast or
        faster (no mask, decoding steps, key padding, a structure folded into a tensor)."""
        mask = call.mask
        if call.q_len <= SHORT_QUERY or mask.key_padding is not None:
            return 40
        if mask._xformers_structure() is None and mask.bias is None:
            return 40
        if not _INSTALLED or self.why_not_on(call.device):
            return 40  # cannot run here at all: why_not says why
        plan = self.plan(call)
        return 20 if isinstance(plan, XFormersPlan) and not plan.folded else 40

    def attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: AttentionMask,
        *,
        scale: float,
        dropout: float,
        softcap: float | None,
    ) -> Tensor:
        from txblocks.attention.xformers_op import attention

        call = AttentionCall.of(q, k, mask, dropout, softcap, v=v)
        structure, bias = _parts(mask, q.dtype, q.device, q.shape[0])
        plan = _plan(*_key(call, structure, bias))
        if isinstance(plan, tuple):  # attend() is called on checked calls only
            raise RuntimeError("xformers cannot run this call: " + "; ".join(plan))
        tensor = _folded(mask, q.dtype, q.device) if plan.folded else bias
        kind = plan.structure
        out, *_ = attention(
            q, k, v, tensor,
            "" if kind is None else kind.kind, 0 if kind is None else kind.window,
            [] if kind is None else list(kind.seqlens),
            plan.layout, scale, dropout, plan.forward_op, plan.backward_op,
        )  # fmt: skip
        empty = mask.empty_rows(q.device)  # (B|1, 1, Tq, 1)
        if empty is not None:
            out = out.masked_fill(empty.transpose(1, 2), 0.0)  # b 1 t 1 -> b t 1 1
        return out


def _parts(
    mask: AttentionMask, dtype: torch.dtype, device: torch.device, batch: int
) -> tuple[XFormersStructure | None, Tensor | None]:
    """(structure, tensor bias) of ``mask`` for xformers, the tensor padded to 16-byte rows;
    memoized on the mask, so every layer shares them."""
    return mask._cached(("xformers_parts", str(dtype), str(device), batch),
                        lambda: _make_parts(mask, dtype, device, batch))  # fmt: skip


def _make_parts(
    mask: AttentionMask, dtype: torch.dtype, device: torch.device, batch: int
) -> tuple[XFormersStructure | None, Tensor | None]:
    structure, tensor = mask.xformers_parts(dtype, device)
    if structure is not None and structure.packed and sum(structure.seqlens) != batch * mask.q_len:
        structure, tensor = None, mask.additive(dtype, device)  # one row of lengths, broadcast
    return structure, None if tensor is None else padded_bias(tensor)


def _folded(mask: AttentionMask, dtype: torch.dtype, device: torch.device) -> Tensor | None:
    """The structure, padding and bias of ``mask`` as one dense tensor, padded for xformers."""
    return mask._cached(("xformers_folded", str(dtype), str(device)),
                        lambda: padded_bias(mask.additive(dtype, device)))  # fmt: skip


def _key(call: AttentionCall, structure: XFormersStructure | None, bias: Tensor | None) -> _Key:
    shapes = {"q": (call.batch, call.q_len, call.n_heads, call.head_dim),
              "k": (call.batch, call.k_len, call.n_kv_heads, call.head_dim)}  # fmt: skip
    tensors = {"q": call.q, "k": call.k, "v": call.v}
    forms = {}
    for name, t in tensors.items():
        shape = shapes["q" if name == "q" else "k"]
        forms[name] = _form(t) if t is not None else (shape, _contiguous(shape))
    return _Key(
        dtype=call.dtype,
        device=str(call.device),
        q=forms["q"],
        k=forms["k"],
        v=forms["v"],
        structure=None if structure is None else (
            structure.kind, structure.window, structure.seqlens),
        bias=_form(bias, grad=call.requires_grad),
        # the fold's rules depend on its row alignment and whether it needs a gradient only
        dense=None if structure is None else (
            (1, 1, call.q_len, call.k_len + -call.k_len % 8),
            _contiguous((1, 1, call.q_len, call.k_len + -call.k_len % 8)),
            call.requires_grad and call.mask.bias is not None and call.mask.bias.requires_grad,
        ),
        dropout=call.dropout,
        scale=1.0,  # txblocks always passes a scale; its value changes no rule
        needs_grad=call.requires_grad,
    )


def _contiguous(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))
