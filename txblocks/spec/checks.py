"""Cross-field checks that pydantic's per-field validation cannot express."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel

from txblocks.errors import Problem
from txblocks.nn.dims import ModelDims
from txblocks.registry import ComponentConfig
from txblocks.spec.errors import format_path
from txblocks.spec.models import ModelSpec

__all__ = ["check_spec", "dims_of"]


def dims_of(spec: ModelSpec) -> ModelDims:
    """The sizes of ``spec`` that component factories receive."""
    return ModelDims(
        d_model=spec.d_model,
        n_heads=spec.n_heads,
        n_kv_heads=spec.kv_heads,
        head_dim=spec.head_size,
        max_seq_len=spec.max_seq_len,
        n_layers=spec.n_layers,
        vocab_size=spec.vocab_size,
    )


def _divisors(n: int) -> str:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return ", ".join(str(d) for d in sorted({*small, *(n // d for d in small)}))


def _heads(spec: ModelSpec) -> Iterator[Problem]:
    if spec.head_dim is None and spec.d_model % spec.n_heads:
        yield Problem(
            "n_heads",
            f"d_model {spec.d_model} is not divisible by n_heads {spec.n_heads}; use one of "
            f"{_divisors(spec.d_model)}, or set head_dim",
        )
    kv = spec.kv_heads
    if kv > spec.n_heads or spec.n_heads % kv:
        yield Problem(
            "n_kv_heads",
            f"n_heads {spec.n_heads} is not a multiple of n_kv_heads {kv}; use one of "
            f"{_divisors(spec.n_heads)}",
        )


def _overrides(spec: ModelSpec) -> Iterator[Problem]:
    for i, override in enumerate(spec.layers):
        reason = override.out_of_range(spec.n_layers)
        if reason is not None:
            yield Problem(f"layers[{i}].select", reason)


def _components(node: Any, path: list[str | int]) -> Iterator[tuple[list[str | int], ComponentConfig]]:
    if isinstance(node, ComponentConfig):
        yield path, node
    if isinstance(node, BaseModel):
        for name in type(node).model_fields:
            yield from _components(getattr(node, name), [*path, name])
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _components(item, [*path, i])


def check_spec(spec: ModelSpec) -> list[Problem]:
    """Every cross-field problem of a validated spec (empty when it is consistent)."""
    problems = [*_heads(spec), *_overrides(spec)]
    if problems:
        return problems  # the sizes below would be meaningless
    dims = dims_of(spec)
    for path, config in _components(spec, []):
        problems += [Problem(format_path(path), msg) for msg in config.check(dims)]
    return problems
