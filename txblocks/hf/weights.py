"""Copying weights through a family's rules, with nothing left over in either model.

The txblocks model drives: each of its parameters (tied ones once) must match a rule,
whose HF names must exist with fitting shapes; afterwards every HF parameter (tied ones
once; every slice of a stacked one, for ``select`` rules) must have been read
(``from_hf``) or written (``to_hf``), unless its head entry ignores it on purpose. Any
gap is an :class:`~txblocks.hf.family.HFConversionError`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from txblocks.errors import Problem
from txblocks.hf.family import HFConversionError, HFFamily, HFHead
from txblocks.hf.rules import Rule, Transform

__all__ = ["copy_weights"]


def _unique(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The first name of each distinct tensor (a tied weight appears once)."""
    seen: set[int] = set()
    out = {}
    for name, tensor in state.items():
        if id(tensor) not in seen:
            seen.add(id(tensor))
            out[name] = tensor
    return out


def _rules(family: HFFamily, head: HFHead, hf_model: nn.Module) -> list[tuple[Rule, str]]:
    """Each rule with the prefix of its HF names (the base model's, for the body)."""
    base = getattr(hf_model, "base_model", hf_model)
    prefix = "" if base is hf_model else f"{hf_model.base_model_prefix}."
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


def _slices(
    name: str, index: int, hf_names: list[str], hf_tensors: list[Tensor]
) -> tuple[list[Tensor], list[Problem]]:
    """The slice ``index`` of each stacked HF tensor, or why there is none."""
    problems = [
        Problem(name, f"slice {index} is outside {n} ({t.shape[0] if t.dim() else 0} slices)")
        for n, t in zip(hf_names, hf_tensors, strict=True)
        if t.dim() == 0 or index >= t.shape[0]
    ]
    return ([] if problems else [t[index] for t in hf_tensors]), problems


def _bound(transform: Transform, model: nn.Module) -> Transform:
    """``transform``, or the one its ``bind(spec)`` gives for this txblocks model's spec."""
    bind = getattr(transform, "bind", None)
    return transform if bind is None else bind(getattr(model, "spec", None))


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
    hf_state = hf_model.state_dict(keep_vars=True)
    done: set[int] = set()
    sliced: dict[int, tuple[str, int, set[int]]] = {}  # id -> (HF name, slices, slices seen)
    problems = []
    with torch.no_grad():
        rules = _rules(family, head, hf_model)
        for name, tensor, rule, hf_names in _plan(tx_model, rules, family, hf_state.__contains__):
            absent = [n for n in hf_names if n not in hf_state]
            if absent:
                problems.append(Problem(name, f"HF parameter(s) {', '.join(absent)} not found"))
                continue
            hf_tensors = [hf_state[n] for n in hf_names]
            targets = hf_tensors
            index = rule.slice_of(name)
            if index is not None:
                targets, bad = _slices(name, index, hf_names, hf_tensors)
                if bad:
                    problems += bad
                    continue
                for n, t in zip(hf_names, hf_tensors, strict=True):
                    sliced.setdefault(id(t), (n, t.shape[0], set()))[2].add(index)
            transform = _bound(rule.resolved, tx_model)
            if to_hf:
                values = transform.to_hf(tensor.detach(), targets)
                pairs = list(zip(targets, values, strict=True))
            else:
                pairs = [(tensor, transform.to_tx([t.detach() for t in targets]))]
            for target, value in pairs:
                if target.shape != value.shape:
                    problems.append(Problem(name, (
                        f"shape {tuple(value.shape)} does not fit {tuple(target.shape)} "
                        f"({', '.join(hf_names)}{'' if index is None else f' [{index}]'})"
                    )))  # fmt: skip
                else:
                    target.copy_(value)
            done.update(id(t) for t in hf_tensors)
    left = "unwritten (it would stay random)" if to_hf else "unread"
    for n, count, seen in sliced.values():
        missing = sorted(set(range(count)) - seen)
        if missing:
            problems.append(Problem(n, f"slices {missing} of {count} left {left}"))
    problems += [
        Problem(n, f"HF parameter left {left}")
        for n, t in _unique(hf_state).items()
        if id(t) not in done and not n.startswith(head.ignore)
    ]
    if problems:
        raise HFConversionError(
            f"the weights of {head.hf_class} and of the txblocks model do not correspond", problems
        )
