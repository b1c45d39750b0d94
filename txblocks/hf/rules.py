"""Weight-name rules: HF parameter name(s) <-> a txblocks parameter name, through a transform.

A family declares its rules as data, next to its config mapping::

    Rule("h.{i}.attn.c_attn.weight", "blocks.{i}.attention.qkv.weight", "transpose")
    Rule(("layers.{i}.self_attn.q_proj.{p}", "layers.{i}.self_attn.k_proj.{p}",
          "layers.{i}.self_attn.v_proj.{p}"), "blocks.{i}.attention.qkv.{p}", "concat")

``{i}`` matches a layer index, any other ``{name}`` one dotted name part (``weight``,
``bias``). Transforms: ``copy``; ``transpose`` (GPT-2's ``Conv1D`` stores (in, out));
``concat`` (HF tensors stacked along rows: fused QKV, the GLU's gate then up rows; split
back by the HF tensors' shapes); ``alias`` (one tensor that HF keeps under several names;
the first is read, all are written); ``select`` (one slice of a stacked HF tensor per
txblocks parameter, picked by a placeholder that only the txblocks name has)::

    Rule("layers.{i}.mlp.experts.down_proj", "blocks.{i}.ffn.experts.{e}.down.weight", "select")

A family may pass its own :class:`Transform` (``Select(then="transpose")`` for stacked
tensors stored as (E, in, out)).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType
from typing import ClassVar, Protocol

import torch
from torch import Tensor

__all__ = ["TRANSFORMS", "Rule", "Select", "Transform"]


class Transform(Protocol):
    """Turns HF tensors into one txblocks tensor and back.

    A transform may also have an ``index`` attribute: the name of a placeholder of the
    txblocks pattern that the HF patterns lack (:class:`Select`). The engine then hands
    ``to_tx`` and ``to_hf`` the slice ``[value]`` of each HF tensor (writes go into that
    slice), and checks that every slice of each HF tensor is read or written once.

    A transform that depends on the model's shape (GPT-NeoX's and Falcon's fused qkv,
    grouped per head) may have a ``bind(spec)`` method: the engine calls it with the
    txblocks model's spec and uses the transform it returns.

    Attributes:
        arity: how many HF names a rule with this transform has (None: two or more).
    """

    arity: int | None

    def to_tx(self, tensors: Sequence[Tensor]) -> Tensor:
        """The txblocks tensor from the HF tensors, in the rule's order."""
        ...

    def to_hf(self, tensor: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
        """The HF tensors; ``like`` are the HF targets (for their shapes)."""
        ...


class _Copy:
    arity = 1

    def to_tx(self, tensors: Sequence[Tensor]) -> Tensor:
        return tensors[0]

    def to_hf(self, tensor: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
        return [tensor]


class _Transpose:
    arity = 1

    def to_tx(self, tensors: Sequence[Tensor]) -> Tensor:
        return tensors[0].t()

    def to_hf(self, tensor: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
        return [tensor.t()]


class _Concat:
    arity = None

    def to_tx(self, tensors: Sequence[Tensor]) -> Tensor:
        return torch.cat(list(tensors), dim=0)

    def to_hf(self, tensor: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
        return list(tensor.split([t.shape[0] for t in like], dim=0))


class _Alias:
    arity = None

    def to_tx(self, tensors: Sequence[Tensor]) -> Tensor:
        return tensors[0]

    def to_hf(self, tensor: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
        return [tensor] * len(like)


@dataclass(frozen=True)
class Select:
    """One slice of a stacked HF tensor <-> one txblocks parameter.

    HF keeps some per-module weights stacked in one tensor: Mixtral's
    ``experts.gate_up_proj`` is (E, 2F, D), expert ``e``'s GLU weight is ``[e]``. The
    rule's txblocks pattern has a placeholder (``index``, default ``e``) that its HF
    pattern lacks; the engine passes the slice ``[e]`` (along the first dimension) of the
    HF tensor, to which ``then`` (a transform of one HF name) applies.

    Args:
        index: the placeholder that numbers the slices.
        then: the transform of each slice: ``copy``, or ``transpose`` for (E, in, out) stacks.

    Raises:
        ValueError: ``then`` is not ``copy`` or ``transpose``.
    """

    index: str = "e"
    then: str = "copy"
    arity: ClassVar[int] = 1

    def __post_init__(self) -> None:
        if self.then not in ("copy", "transpose"):
            raise ValueError(f"Select: then={self.then!r}; allowed: copy, transpose")

    @property
    def _then(self) -> Transform:
        return TRANSFORMS[self.then]

    def to_tx(self, tensors: Sequence[Tensor]) -> Tensor:
        return self._then.to_tx(tensors)

    def to_hf(self, tensor: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
        return self._then.to_hf(tensor, like)


#: The transforms a :class:`Rule` can name.
TRANSFORMS: Mapping[str, Transform] = MappingProxyType({
    "copy": _Copy(), "transpose": _Transpose(), "concat": _Concat(), "alias": _Alias(),
    "select": Select(),
})  # fmt: skip

_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


def _compile(pattern: str, numeric: frozenset[str]) -> re.Pattern[str]:
    parts, last = [], 0
    for m in _PLACEHOLDER.finditer(pattern):
        parts.append(re.escape(pattern[last : m.start()]))
        name = m.group(1)
        parts.append(rf"(?P<{name}>\d+)" if name in numeric else rf"(?P<{name}>[A-Za-z0-9_]+)")
        last = m.end()
    parts.append(re.escape(pattern[last:]))
    return re.compile("".join(parts))


@dataclass(frozen=True)
class Rule:
    """HF parameter name(s) <-> one txblocks parameter name, through a transform.

    Args:
        hf: an HF name pattern, or several (``concat``, ``alias``).
        tx: the txblocks name pattern; each ``hf`` pattern uses the same placeholders
            (but the ``index`` placeholder of a transform such as ``select``).
        transform: a name in :data:`TRANSFORMS`, or a :class:`Transform`.

    Raises:
        ValueError: placeholders that differ, an unknown transform, or a number of HF
            names the transform does not take (at declaration, not at conversion).
    """

    hf: str | tuple[str, ...]
    tx: str
    transform: str | Transform = "copy"

    def __post_init__(self) -> None:
        transform = self.resolved
        names = set(_PLACEHOLDER.findall(self.tx))
        index = self.index
        if index is not None:
            if index not in names:
                raise ValueError(
                    f"rule {self.tx!r}: transform {self.transform!r} picks slices by "
                    f"{{{index}}}, which the txblocks pattern must have"
                )
            names.discard(index)
        for pattern in self.sources:
            if set(_PLACEHOLDER.findall(pattern)) != names:
                raise ValueError(
                    f"rule {self.tx!r}: {pattern!r} must use the placeholders {sorted(names)}"
                )
        n, arity = len(self.sources), transform.arity
        if (arity is not None and n != arity) or (arity is None and n < 2):
            raise ValueError(
                f"rule {self.tx!r}: transform {self.transform!r} takes "
                f"{arity or 'two or more'} HF name(s), got {n}"
            )

    @property
    def sources(self) -> tuple[str, ...]:
        """The HF name patterns."""
        return (self.hf,) if isinstance(self.hf, str) else self.hf

    @property
    def resolved(self) -> Transform:
        """The transform object."""
        if not isinstance(self.transform, str):
            return self.transform
        try:
            return TRANSFORMS[self.transform]
        except KeyError:
            raise ValueError(
                f"rule {self.tx!r}: unknown transform {self.transform!r}; "
                f"allowed: {', '.join(TRANSFORMS)}"
            ) from None

    @property
    def index(self) -> str | None:
        """The placeholder that picks a slice of the HF tensors (``select``), or None."""
        return getattr(self.resolved, "index", None)

    @cached_property
    def _tx_pattern(self) -> re.Pattern[str]:
        return _compile(self.tx, frozenset({"i", self.index or "i"}))

    def match(self, tx_name: str, prefix: str = "") -> list[str] | None:
        """The HF names of ``tx_name``, each after ``prefix``; None if the rule does not apply."""
        m = self._tx_pattern.fullmatch(tx_name)
        if m is None:
            return None
        return [prefix + pattern.format(**m.groupdict()) for pattern in self.sources]

    def slice_of(self, tx_name: str) -> int | None:
        """The slice of the HF tensors that ``tx_name`` is (``select``), or None."""
        m = self._tx_pattern.fullmatch(tx_name)
        if m is None or self.index is None:
            return None
        return int(m.group(self.index))
