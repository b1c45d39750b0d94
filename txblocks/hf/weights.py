"""Copying weights through a family's rules, with nothing left over in either model.

The txblocks model drives: each of its parameters (tied ones once) must match a rule,
whose HF names must exist with fitting shapes; afterwards every HF tensor (tied ones
once; every slice of a stacked one, for ``select`` rules) must have been read
(``from_hf``) or written (``to_hf``), unless its head entry ignores it on purpose. Any
gap is an :class:`~txblocks.hf.family.HFConversionError`.

One engine (:func:`transfer`) serves every HF side, seen as :class:`HFTensors`: a live
``transformers`` model (:class:`LiveTensors`, for ``from_hf`` / ``to_hf``), a folder of
safetensors shards read tensor by tensor (``txblocks.hf.shards``, for ``from_pretrained``)
and a model skeleton whose tensors go to shards (for ``save_pretrained``).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from typing import Protocol

import torch
from torch import Tensor, nn

from txblocks.errors import Problem
from txblocks.hf.family import HFConversionError, HFFamily, HFHead
from txblocks.hf.rules import Rule, Transform

__all__ = ["HFTensors", "LiveTensors", "copy_weights", "transfer"]


class HFTensors(Protocol):
    """The HF side of a copy: tensors by their full ``transformers`` names.

    Attributes:
        prefix: where the base model's names start (``"transformer."``; ``""`` for a base
            model), put before the names of the family's body rules.
    """

    prefix: str

    def key(self, name: str) -> Hashable | None:
        """The identity of the tensor under ``name`` (one for tied names), or None if absent."""
        ...

    def shape(self, name: str) -> torch.Size:
        """The shape of the tensor under ``name`` (which exists)."""
        ...

    def read(self, name: str) -> Tensor:
        """The tensor under ``name``: its values (``from_hf``), or the target whose shape a
        ``to_hf`` transform splits by (which may be on the ``meta`` device)."""
        ...

    def write(self, name: str, value: Tensor, index: int | None) -> None:
        """Store ``value`` as the tensor ``name`` (as its slice ``index``, for ``select``)."""
        ...

    def unique(self) -> dict[str, Hashable]:
        """Every distinct tensor once: its first name -> its :meth:`key`."""
        ...


def _unique(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The first name of each distinct tensor (a tied weight appears once)."""
    seen: set[int] = set()
    out = {}
    for name, tensor in state.items():
        if id(tensor) not in seen:
            seen.add(id(tensor))
            out[name] = tensor
    return out


class LiveTensors:
    """A ``transformers`` model as the HF side: its ``state_dict``, written in place."""

    def __init__(self, hf_model: nn.Module) -> None:
        base = getattr(hf_model, "base_model", hf_model)
        self.prefix = "" if base is hf_model else f"{hf_model.base_model_prefix}."
        self._state = hf_model.state_dict(keep_vars=True)

    def key(self, name: str) -> Hashable | None:
        tensor = self._state.get(name)
        return None if tensor is None else id(tensor)

    def shape(self, name: str) -> torch.Size:
        return self._state[name].shape

    def read(self, name: str) -> Tensor:
        return self._state[name].detach()

    def write(self, name: str, value: Tensor, index: int | None) -> None:
        target = self._state[name] if index is None else self._state[name][index]
        target.copy_(value)

    def unique(self) -> dict[str, Hashable]:
        return {name: id(t) for name, t in _unique(self._state).items()}


def _rules(family: HFFamily, head: HFHead, prefix: str) -> list[tuple[Rule, str]]:
    """Each rule with the prefix of its HF names (the base model's, for the body)."""
    return [(rule, prefix) for rule in family.weights] + [(rule, "") for rule in head.weights]


def _plan(
    model: nn.Module, rules: list[tuple[Rule, str]], family: HFFamily,
    exists: Callable[[str], bool],
) -> Iterator[tuple[str, Tensor, Rule, list[str]]]:
    """(txblocks name, tensor, rule, HF names) for each txblocks parameter.

    Rules that match one txblocks name are alternatives (Falcon names a block's norms by
    its layout): the first whose HF names all exist wins, else the first that matches.
    """
    missing = []
    for name, tensor in _unique(model.state_dict(keep_vars=True)).items():
        matches = [(rule, hf_names) for rule, prefix in rules
                   if (hf_names := rule.match(name, prefix)) is not None]  # fmt: skip
        if not matches:
            missing.append(Problem(name, "no weight rule maps this txblocks parameter"))
            continue
        found = next((m for m in matches if all(exists(n) for n in m[1])), matches[0])
        yield name, tensor, *found
    if missing:
        raise HFConversionError(f"the {family.name} weight rules are incomplete", missing)


def _outside(name: str, index: int, hf_names: list[str], hf: HFTensors) -> list[Problem]:
    """Why the slice ``index`` of each stacked HF tensor does not exist (empty if it does)."""
    problems = []
    for n in hf_names:
        shape = hf.shape(n)
        if len(shape) == 0 or index >= shape[0]:
            count = shape[0] if len(shape) else 0
            problems.append(Problem(name, f"slice {index} is outside {n} ({count} slices)"))
    return problems


def _bound(transform: Transform, model: nn.Module) -> Transform:
    """``transform``, or the one its ``bind(spec)`` gives for this txblocks model's spec."""
    bind = getattr(transform, "bind", None)
    return transform if bind is None else bind(getattr(model, "spec", None))


def _copy_into(name: str, tensor: Tensor, value: Tensor) -> None:
    tensor.copy_(value)


#: ``(txblocks name, its current tensor, the value) -> None``: how ``from_hf`` stores a value.
Put = Callable[[str, Tensor, Tensor], None]


def transfer(
    tx_model: nn.Module,
    hf: HFTensors,
    family: HFFamily,
    head: HFHead,
    *,
    to_hf: bool,
    put: Put = _copy_into,
    what: str | None = None,
) -> None:
    """Copy every weight from ``hf`` to ``tx_model`` (or back, with ``to_hf``).

    Tensors are read, transformed and stored one txblocks parameter at a time, in the
    order of the txblocks model's ``state_dict``.

    Args:
        tx_model: the txblocks model (its tensors may be on the ``meta`` device when
            ``put`` materializes them).
        hf: the HF side.
        to_hf: write ``hf`` from ``tx_model`` instead of the other way.
        put: how a value reaches a txblocks tensor (default ``tensor.copy_(value)``).
        what: the HF side in the error message (default the head's class).

    Raises:
        HFConversionError: a txblocks parameter without a rule, a missing HF name, a shape
            that does not fit, or an HF tensor (or slice) left unread / unwritten.
    """
    done: set[Hashable] = set()
    sliced: dict[Hashable, tuple[str, int, set[int]]] = {}  # key -> (HF name, slices, seen)
    problems = []
    with torch.no_grad():
        rules = _rules(family, head, hf.prefix)
        exists = lambda n: hf.key(n) is not None  # noqa: E731
        for name, tensor, rule, hf_names in _plan(tx_model, rules, family, exists):
            keys = [hf.key(n) for n in hf_names]
            absent = [n for n, k in zip(hf_names, keys, strict=True) if k is None]
            if absent:
                problems.append(Problem(name, f"HF parameter(s) {', '.join(absent)} not found"))
                continue
            index = rule.slice_of(name)
            if index is not None:
                bad = _outside(name, index, hf_names, hf)
                if bad:
                    problems += bad
                    continue
                for n, k in zip(hf_names, keys, strict=True):
                    sliced.setdefault(k, (n, hf.shape(n)[0], set()))[2].add(index)
            transform = _bound(rule.resolved, tx_model)
            where = f"({', '.join(hf_names)}{'' if index is None else f' [{index}]'})"
            done.update(keys)
            tensors = [hf.read(n) if index is None else hf.read(n)[index] for n in hf_names]
            try:
                if to_hf:
                    values = transform.to_hf(tensor.detach(), tensors)
                else:
                    values = [transform.to_tx(tensors)]
            # HF tensors whose shapes do not combine (a folder's): the transform says why
            except (RuntimeError, ValueError, IndexError) as exc:
                shapes = ", ".join(str(tuple(t.shape)) for t in tensors)
                problems.append(Problem(name, f"HF shapes {shapes} {where}: {_first_line(exc)}"))
                continue
            if to_hf:
                for n, target, value in zip(hf_names, tensors, values, strict=True):
                    if target.shape != value.shape:
                        problems.append(Problem(name, _misfit(value, target, where)))
                    else:
                        hf.write(n, value, index)
            elif tensor.shape != values[0].shape:
                problems.append(Problem(name, _misfit(values[0], tensor, where)))
            else:
                del tensors
                put(name, tensor, values.pop())
    left = "unwritten (it would stay random)" if to_hf else "unread"
    for n, count, seen in sliced.values():
        missing = sorted(set(range(count)) - seen)
        if missing:
            problems.append(Problem(n, f"slices {missing} of {count} left {left}"))
    problems += [
        Problem(n, f"HF parameter left {left}")
        for n, k in hf.unique().items()
        if k not in done and not n.startswith(head.ignore)
    ]
    if problems:
        raise HFConversionError(
            f"the weights of {what or head.hf_class} and of the txblocks model do not correspond",
            problems,
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _misfit(value: Tensor, target: Tensor, where: str) -> str:
    return f"shape {tuple(value.shape)} does not fit {tuple(target.shape)} {where}"


def copy_weights(
    tx_model: nn.Module, hf_model: nn.Module, family: HFFamily, head: HFHead, *, to_hf: bool
) -> None:
    """Copy every weight from ``hf_model`` to ``tx_model`` (or back, with ``to_hf``).

    A rule whose transform picks slices (``select``) reads or writes one slice of a stacked
    HF tensor; every slice of that tensor must be covered.

    Raises:
        HFConversionError: a txblocks parameter without a rule, a missing HF name, a shape
            that does not fit, or an HF parameter (or slice) left unread / unwritten.
    """
    transfer(tx_model, LiveTensors(hf_model), family, head, to_hf=to_hf)
