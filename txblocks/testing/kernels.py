"""Conformance of an attention kernel: outputs and gradients against the eager reference.

Shapes (xformers layout): B batch, Tq/Tk query/key length, H query heads, Hkv kv heads,
D head_dim; q (B, Tq, H, D), k and v (B, Tk, Hkv, D).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from txblocks.attention.eager import EagerKernel
from txblocks.attention.kernel import AttentionCall, AttentionKernel
from txblocks.attention.mask import AttentionMask
from txblocks.attention.strategies import MaskStrategy
from txblocks.testing.masks import (
    MaskExample,
    builtin_mask_examples,
    random_padding,
    random_seq_lens,
)
from txblocks.testing.report import Report, assert_close, fail, generator, new_seed

__all__ = ["check_attention_kernel"]

H, D = 4, 8
SCALE = 0.3  # not D ** -0.5, so that a kernel ignoring `scale` fails
SOFTCAP = 2.0
#: name -> (Tq, Tk, q_offset): self-attention, a KV cache (bottom-right), queries at 0.
SHAPES = {"square": (6, 6, None), "cache": (3, 7, None), "top_left": (4, 7, 0)}


def _examples(masks: Iterable[MaskStrategy | MaskExample] | None) -> list[MaskExample]:
    if masks is None:
        return builtin_mask_examples()
    return [m if isinstance(m, MaskExample) else MaskExample(repr(m), m) for m in masks]


def _build(
    example: MaskExample, batch: int, shape: str, padding: Tensor | None, gen: torch.Generator
) -> AttentionMask:
    q_len, k_len, q_offset = SHAPES[shape]
    seq_lens = random_seq_lens(batch, k_len, gen) if example.packed else None
    prefix = None
    if example.prefix_per_row:
        prefix = torch.randint(0, k_len + 1, (batch,), generator=gen)
    return example.strategy(
        q_len, k_len, key_padding=padding, q_offset=q_offset, seq_lens=seq_lens,
        prefix_lengths=prefix,
    )  # fmt: skip


def _call_args(mask: AttentionMask) -> str:
    """The packed lengths or per-row prefixes of ``mask``, for messages."""
    seq_lens = getattr(mask, "seq_lens", None)
    prefix = getattr(mask, "prefix_lengths", None)
    if seq_lens is not None:
        return f" (seq_lens={[list(row) for row in seq_lens]})"
    if isinstance(prefix, Tensor):
        return f" (prefix_lengths={prefix.tolist()})"
    return ""


class _Inputs:
    """Random q, k, v, bias and output cotangent, in float32 on the CPU."""

    def __init__(self, mask: AttentionMask, batch: int, hkv: int, gen: torch.Generator) -> None:
        tq, tk = mask.q_len, mask.k_len
        self.q = torch.randn(batch, tq, H, D, generator=gen)
        self.k = torch.randn(batch, tk, hkv, D, generator=gen)
        self.v = torch.randn(batch, tk, hkv, D, generator=gen)
        self.bias = torch.randn(1, H, tq, tk, generator=gen)
        self.cotangent = torch.randn(batch, tq, H, D, generator=gen)

    def run(
        self,
        kernel: AttentionKernel,
        mask: AttentionMask,
        *,
        bias: bool,
        dtype: torch.dtype,
        device: torch.device,
        softcap: float | None = None,
        check: bool = False,
        rounded_to: torch.dtype | None = None,
    ) -> tuple[Tensor, list[Tensor | None]] | list[str]:
        """Output and gradients (q, k, v[, bias]); with ``check``, why_not's reasons if any.

        ``rounded_to`` first rounds the inputs to that dtype (the reference then sees the
        same values as a kernel run in low precision).
        """

        def leaf(t: Tensor) -> Tensor:
            t = t.to(rounded_to) if rounded_to is not None else t
            return t.to(device, dtype).requires_grad_()

        leaves = [leaf(t) for t in (self.q, self.k, self.v)]
        bias_leaf = leaf(self.bias) if bias else None
        call_mask = mask.with_bias(bias_leaf)
        if check:
            reasons = kernel.why_not(AttentionCall.of(leaves[0], leaves[1], call_mask, 0.0, softcap,
                                                      v=leaves[2]))  # fmt: skip
            if reasons:
                return reasons
        out = kernel(*leaves, call_mask, scale=SCALE, softcap=softcap)
        (out.float() * self.cotangent.to(device)).sum().backward()
        grads = [t.grad for t in leaves] + ([bias_leaf.grad] if bias_leaf is not None else [])
        return out.detach(), grads


def check_attention_kernel(
    kernel: AttentionKernel,
    *,
    masks: Iterable[MaskStrategy | MaskExample] | None = None,
    dtypes: Sequence[torch.dtype] = (torch.float32,),
    device: torch.device | str = "cpu",
    atol: float = 1e-5,
    rtol: float = 1e-5,
    gqa: bool = True,
    seed: int | None = None,
) -> Report:
    """Check an attention kernel against the built-in eager reference.

    For every mask (each built-in strategy by default), three shapes (Tq == Tk, a
    KV cache with Tq < Tk, queries at offset 0), key padding (none, right, left),
    H == Hkv and (with ``gqa``) grouped and multi-query K/V heads, without and with
    an additive bias, and for every dtype: on fresh random inputs, the kernel's
    output and the gradients of q, k, v (and the bias) must match
    :class:`~txblocks.attention.EagerKernel` run in float32 (float64 for float64).
    A setting runs only when ``kernel.why_not(call)`` is empty; the others are
    reported as skipped with the kernel's reasons. Softcapping is compared too when
    the kernel supports it. Rows with no allowed key must output exactly 0, with
    finite gradients.

    Args:
        kernel: the kernel under test, e.g. ``registry.config("attention", name).build()``.
        masks: strategies (or :class:`MaskExample`, to call them packed or with per-row
            prefixes) to run; default :func:`builtin_mask_examples`.
        dtypes: input dtypes; the reference always runs in float32 or better.
        device: where the kernel runs.
        atol: absolute tolerance of every comparison.
        rtol: relative tolerance of every comparison.
        gqa: also run with grouped (Hkv = H/2) and multi-query (Hkv = 1) K/V heads.
        seed: the seed of the random inputs; random when None (it is in every message).

    Returns:
        A :class:`Report` of what ran and what was skipped and why.

    Raises:
        AssertionError: an output or gradient differs, naming the mask, the setting,
            the max difference and the seed; or the empty-row contract is broken.

    Example::

        report = check_attention_kernel(MyKernel(), dtypes=(torch.float16,), device="cuda",
                                        atol=2e-3, rtol=2e-3)
        print(report)
    """
    seed = new_seed(seed)
    name = getattr(kernel, "name", type(kernel).__name__)
    run = _Run(kernel, torch.device(device), seed, atol, rtol, f"attention kernel {name!r}")
    gen = generator(seed)
    head_options = (H, H // 2, 1) if gqa else (H,)
    for dtype, example in itertools.product(dtypes, _examples(masks)):
        dtype_name = str(dtype).removeprefix("torch.")
        for shape, padding_kind in itertools.product(SHAPES, ("none", "right", "left")):
            padding = random_padding(padding_kind, 2, SHAPES[shape][1], gen)
            mask = _build(example, 2, shape, padding, gen)
            for hkv, bias in itertools.product(head_options, (False, True)):
                setting = (
                    f"mask={example.label}{_call_args(mask)}, shape={shape} (Tq={mask.q_len}, "
                    f"Tk={mask.k_len}, q_offset={mask.q_offset}), padding={padding_kind}, H={H}, "
                    f"Hkv={hkv}, bias={'yes' if bias else 'no'}, dtype={dtype_name}, "
                    f"device={run.device}"
                )
                run.compare(_Inputs(mask, 2, hkv, gen), mask, bias, dtype, None, setting)
        mask = _build(example, 2, "square", None, gen)
        setting = (f"mask={example.label}, softcap={SOFTCAP}, dtype={dtype_name}, "
                   f"device={run.device}")  # fmt: skip
        run.compare(_Inputs(mask, 2, head_options[-1], gen), mask, False, dtype, SOFTCAP, setting)
        run.empty_rows(example, dtype, head_options[-1], gen)
    return run.report


class _Run:
    """The kernel under test, the reference, and the report of one check."""

    def __init__(
        self,
        kernel: AttentionKernel,
        device: torch.device,
        seed: int,
        atol: float,
        rtol: float,
        subject: str,
    ) -> None:
        self.kernel, self.reference, self.device = kernel, EagerKernel(), device
        self.seed, self.atol, self.rtol, self.subject = seed, atol, rtol, subject
        self.report = Report(subject, seed=seed)

    def fail(self, what: str, setting: str) -> AssertionError:
        return fail(self.subject, what, setting, self.seed)

    def attempt(
        self,
        inputs: _Inputs,
        mask: AttentionMask,
        bias: bool,
        dtype: torch.dtype,
        softcap: float | None,
        setting: str,
    ) -> tuple[Tensor, list[Tensor | None]] | list[str]:
        """The kernel's output and gradients, or its reasons for not running the call."""
        try:
            return inputs.run(self.kernel, mask, bias=bias, dtype=dtype, device=self.device,
                              softcap=softcap, check=True)  # fmt: skip
        except Exception as exc:
            message = f"raised {type(exc).__name__}: {exc} although why_not() was empty"
            raise self.fail(message, setting) from exc

    def compare(
        self,
        inputs: _Inputs,
        mask: AttentionMask,
        bias: bool,
        dtype: torch.dtype,
        softcap: float | None,
        setting: str,
    ) -> None:
        """Output and gradients of the kernel against eager on the same inputs."""
        result = self.attempt(inputs, mask, bias, dtype, softcap, setting)
        if isinstance(result, list):
            self.report.skip(setting, "; ".join(result))
            return
        out, grads = result
        ref_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        want, want_grads = inputs.run(self.reference, mask, bias=bias, dtype=ref_dtype,
                                      device=self.device, softcap=softcap,
                                      rounded_to=dtype)  # type: ignore[misc]  # fmt: skip
        if out.dtype != dtype or out.shape != inputs.q.shape:
            raise self.fail(f"output is {out.dtype} {tuple(out.shape)}, expected {dtype} "
                            f"{tuple(inputs.q.shape)}", setting)  # fmt: skip
        kw = {"subject": self.subject, "setting": setting, "atol": self.atol, "rtol": self.rtol,
              "seed": self.seed}  # fmt: skip
        assert_close(out, want, what="output", **kw)
        names = ("q", "k", "v", "bias")[: len(grads)]
        for name, got, expected in zip(names, grads, want_grads, strict=True):
            assert_close(got, expected, what=f"grad {name}", **kw)
        self.report.ran.append(setting)

    def empty_rows(
        self, example: MaskExample, dtype: torch.dtype, hkv: int, gen: torch.Generator
    ) -> None:
        """Row 0 padded everywhere, row 1 left-padded: 0 where nothing is kept, finite grads."""
        padding = torch.ones(3, 6, dtype=torch.bool)
        padding[0] = False
        padding[1, :3] = False
        mask = _build(example, 3, "square", padding, gen)
        setting = (f"mask={example.label}, rows without keys (row 0 padded, row 1 left-padded), "
                   f"Hkv={hkv}, dtype={str(dtype).removeprefix('torch.')}")  # fmt: skip
        inputs = _Inputs(mask, 3, hkv, gen)
        result = self.attempt(inputs, mask, True, dtype, None, setting)
        if isinstance(result, list):  # no bias support: try without
            result = self.attempt(inputs, mask, False, dtype, None, setting)
        if isinstance(result, list):
            self.report.skip(setting, "; ".join(result))
            return
        out, grads = result
        empty = mask.empty_rows("cpu")
        if empty is None or not empty[0].all():
            raise self.fail("the mask kept keys of a row padded everywhere", setting)
        empty = empty.expand(3, 1, -1, 1)[:, 0, :, 0]  # (B, Tq)
        out = out.cpu()
        if not torch.isfinite(out).all():
            raise self.fail("output is not finite", setting)
        if (out[empty] != 0).any():
            worst = float(out[empty].abs().max())
            raise self.fail(f"rows without keys are not 0 (max |out| {worst:.3g})", setting)
        for name, grad in zip(("q", "k", "v", "bias")[: len(grads)], grads, strict=True):
            if grad is None or not torch.isfinite(grad).all():
                raise self.fail(f"grad {name} is missing or not finite", setting)
        if (grads[0].cpu()[empty] != 0).any():  # type: ignore[union-attr]
            raise self.fail("grad q is not 0 for queries that see no key", setting)
        self.report.ran.append(setting)
