"""Conformance of the modules of ``d_model``: ffn, norm, activation.

Shapes: B batch, T time, C the width (``dim``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from txblocks.testing.report import Report, fail, generator, new_seed

__all__ = ["check_activation", "check_ffn", "check_norm"]


@contextmanager
def _mode(module: nn.Module, training: bool) -> Iterator[nn.Module]:
    """Put ``module`` in train or eval mode for the block, then restore it."""
    before = module.training
    module.train(training)
    try:
        yield module
    finally:
        module.train(before)


def _split(result: object, subject: str, setting: str, seed: int) -> tuple[Tensor, Tensor | None]:
    """``out`` or ``(out, aux)`` -> (out, aux); aux must be a finite scalar."""
    if isinstance(result, Tensor):
        return result, None
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], Tensor):
        out, aux = result
        if not isinstance(aux, Tensor) or aux.ndim != 0:
            shape = tuple(aux.shape) if isinstance(aux, Tensor) else type(aux).__name__
            raise fail(subject, f"aux loss must be a scalar tensor, got {shape}", setting, seed)
        if not torch.isfinite(aux):
            raise fail(subject, f"aux loss is not finite ({float(aux)})", setting, seed)
        return out, aux
    raise fail(subject, f"returned {type(result).__name__}; expected a tensor or (out, aux)",
               setting, seed)  # fmt: skip


def _check_grads(
    module: nn.Module, unused: Collection[str], subject: str, setting: str, seed: int
) -> None:
    """Every trainable parameter (but ``unused``) has a finite gradient."""
    for name, param in module.named_parameters():
        if not param.requires_grad or name in unused:
            continue
        if param.grad is None:
            raise fail(subject, f"no gradient reaches parameter {name!r}", setting, seed)
        if not torch.isfinite(param.grad).all():
            raise fail(subject, f"gradient of parameter {name!r} is not finite", setting, seed)


def _independent(
    forward: Callable[[Tensor], Tensor], x: Tensor, index: tuple[int, ...], what: str,
    subject: str, setting: str, seed: int, gen: torch.Generator,
) -> None:  # fmt: skip
    """The output at ``index`` (leading dims) must not change when the rest of ``x`` does."""
    x = x.detach()
    other = torch.randn(x.shape, generator=gen)
    other[index] = x[index]
    with torch.no_grad():
        before, after = forward(x)[index], forward(other)[index]
    if not torch.allclose(before, after, atol=1e-5, rtol=1e-5):
        diff = float((before - after).abs().max())
        raise fail(subject, f"the output at {what} {index} changes (max |diff| {diff:.3g}) when "
                   f"only the inputs elsewhere change", setting, seed)  # fmt: skip


def check_ffn(
    module_or_factory: nn.Module | Callable[[int], nn.Module],
    dim: int,
    *,
    batch_independent: bool | None = None,
    unused: Collection[str] = (),
    batch: int = 4,
    seq_len: int = 16,
    seed: int | None = None,
) -> Report:
    """Check a feed-forward network of width ``dim``.

    ``(B, T, dim)`` must give ``(B, T, dim)`` of the same dtype, or ``(out, aux)`` with
    a finite scalar ``aux`` loss; gradients (of the output and the aux loss) must reach
    every trainable parameter and be finite; and in eval mode, row i of the output
    must not depend on row j of the input.

    Args:
        module_or_factory: the ffn, or ``factory(dim) -> module`` (e.g. ``config.build``).
        dim: the width C.
        batch_independent: check that batch rows do not mix. None reads the module's
            ``batch_independent`` attribute (default True; False for a Mixture of
            Experts whose capacity makes tokens compete, which modules declaring a
            ``capacity_factor`` other than None are taken to do).
        unused: names of parameters allowed to receive no gradient.
        batch: B of the inputs (enough tokens that every expert of a MoE gets some).
        seq_len: T of the inputs.
        seed: the seed of the random inputs; random when None.

    Returns:
        A :class:`Report` of the checks that ran.

    Raises:
        AssertionError: naming the broken property.

    Example::

        check_ffn(lambda dim: MyFFN(dim, hidden=4 * dim), 32)
    """
    module = module_or_factory
    if not isinstance(module, nn.Module):
        module = module_or_factory(dim)
    seed = new_seed(seed)
    gen = generator(seed)
    subject = f"ffn {type(module).__name__}"
    report = Report(subject, seed=seed)
    x = torch.randn(batch, seq_len, dim, generator=gen).requires_grad_()
    setting = f"B={batch}, T={seq_len}, C={dim}"
    with _mode(module, True):
        module.zero_grad(set_to_none=True)
        out, aux = _split(module(x), subject, setting, seed)
        if out.shape != x.shape or out.dtype != x.dtype:
            raise fail(subject, f"output is {out.dtype} {tuple(out.shape)}, expected "
                       f"{x.dtype} {tuple(x.shape)}", setting, seed)  # fmt: skip
        if not torch.isfinite(out).all():
            raise fail(subject, "output is not finite", setting, seed)
        loss = (out * torch.randn(out.shape, generator=gen)).sum()
        (loss if aux is None else loss + aux).backward()
        _check_grads(module, unused, subject, setting, seed)
        module.zero_grad(set_to_none=True)
    report.ran.append(f"shapes and gradients ({setting})")
    if batch_independent is None:
        batch_independent = getattr(module, "batch_independent", None)
    if batch_independent is None:
        batch_independent = getattr(module, "capacity_factor", None) is None
    if not batch_independent:
        report.skip("batch independence", "the ffn declares that batch rows interact")
        return report
    with _mode(module, False):
        _independent(lambda t: _split(module(t), subject, setting, seed)[0], x, (1,),
                     "batch row", subject, setting, seed, gen)  # fmt: skip
    module.zero_grad(set_to_none=True)
    report.ran.append("batch independence")
    return report


def check_norm(module: nn.Module, dim: int, *, seed: int | None = None) -> Report:
    """Check a norm of width ``dim``: ``(..., dim) -> (..., dim)``, one vector at a time.

    Inputs of 2, 3 and 4 dims keep their shape and dtype; the output at each position
    depends only on the input at that position; gradients reach every parameter and
    are finite; a zero vector and a vector of magnitude 1e4 give finite outputs.

    Args:
        module: the norm, e.g. ``registry.config("norm", name).build(dim)``.
        dim: the normalized width.
        seed: the seed of the random inputs; random when None.

    Returns:
        A :class:`Report` of the checks that ran.

    Raises:
        AssertionError: naming the broken property.

    Example::

        check_norm(ScaleNorm(64, ScaleNormConfig()), 64)
    """
    seed = new_seed(seed)
    gen = generator(seed)
    subject = f"norm {type(module).__name__}"
    report = Report(subject, seed=seed)
    with _mode(module, False):
        for shape in ((5, dim), (2, 4, dim), (2, 3, 2, dim)):
            setting = f"input {shape}"
            x = torch.randn(shape, generator=gen).requires_grad_()
            module.zero_grad(set_to_none=True)
            out = module(x)
            if not isinstance(out, Tensor) or out.shape != x.shape or out.dtype != x.dtype:
                got = f"{out.dtype} {tuple(out.shape)}" if isinstance(out, Tensor) else type(out)
                raise fail(subject, f"output is {got}, expected {x.dtype} {shape}", setting, seed)
            (out * torch.randn(shape, generator=gen)).sum().backward()
            _check_grads(module, (), subject, setting, seed)
            _independent(module, x, (1,) * (len(shape) - 1), "position", subject, setting, seed,
                         gen)  # fmt: skip
            report.ran.append(setting)
        x = torch.randn(3, dim, generator=gen)
        x[0] = 0.0
        x[1] *= 1e4
        with torch.no_grad():
            out = module(x)
        if not torch.isfinite(out).all():
            raise fail(subject, "a zero vector or a large one gives a non-finite output",
                       "input (3, dim): zeros, x·1e4, normal", seed)  # fmt: skip
        report.ran.append("zero and large inputs")
    module.zero_grad(set_to_none=True)
    return report


def check_activation(module: nn.Module, *, seed: int | None = None) -> Report:
    """Check an activation: elementwise, shape and dtype kept, finite output and gradient.

    Args:
        module: the activation, e.g. ``registry.config("activation", name).build()``.
        seed: the seed of the random inputs; random when None.

    Returns:
        A :class:`Report` of the checks that ran.

    Raises:
        AssertionError: the output mixes elements, changes shape, or is not finite.

    Example::

        check_activation(torch.nn.SiLU())
    """
    seed = new_seed(seed)
    gen = generator(seed)
    subject = f"activation {type(module).__name__}"
    report = Report(subject, seed=seed)
    x = (torch.randn(2, 5, 8, generator=gen) * 4).requires_grad_()
    setting = "input (2, 5, 8)"
    out = module(x)
    if not isinstance(out, Tensor) or out.shape != x.shape or out.dtype != x.dtype:
        raise fail(subject, "the output does not keep the input's shape and dtype", setting, seed)
    out.backward(torch.randn(x.shape, generator=gen))
    if not (torch.isfinite(out).all() and torch.isfinite(x.grad).all()):  # type: ignore[arg-type]
        raise fail(subject, "output or gradient is not finite", setting, seed)
    perm = torch.randperm(x.numel(), generator=gen)
    with torch.no_grad():
        shuffled = module(x.detach().flatten()[perm].reshape(x.shape)).flatten()
    if not torch.allclose(shuffled, out.detach().flatten()[perm], atol=1e-6, rtol=1e-6):
        raise fail(subject, "is not elementwise (shuffling the input does not shuffle the "
                   "output the same way)", setting, seed)  # fmt: skip
    report.ran.append(setting)
    return report
