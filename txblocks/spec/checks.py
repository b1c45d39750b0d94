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
from txblocks.spec.limits import size_problems
from txblocks.spec.models import ModelSpec, Seq2SeqSpec, VitSpec

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
        vocab_size=spec.vocab,
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
    stacks = spec.stacks
    for i, override in enumerate(spec.layers):
        if override.stack != "both" and override.stack not in stacks:
            yield Problem(
                f"layers[{i}].stack",
                f"{spec.arch} models have no {override.stack} stack; allowed: both, "
                f"{', '.join(stacks)}",
            )
            continue
        for stack, n_layers in stacks.items():
            reason = override.out_of_range(n_layers) if override.stack in (stack, "both") else None
            if reason is not None:
                where = f" in the {stack}" if len(stacks) > 1 else ""
                yield Problem(f"layers[{i}].select", reason + where)
                break


def _vit(spec: ModelSpec) -> Iterator[Problem]:
    if not isinstance(spec, VitSpec):
        return
    for axis, size, patch in zip(("height", "width"), spec.image_hw, spec.patch_hw, strict=True):
        if size % patch:
            yield Problem("patch_size", f"image {axis} {size} is not divisible by patch {axis} {patch}")
    if spec.patch_position == "sincos2d" and spec.d_model % 4:
        yield Problem("patch_position", f"sincos2d needs d_model divisible by 4, got {spec.d_model}")


def _cross_attention_layouts(spec: ModelSpec) -> Iterator[Problem]:
    """Decoder layers of a seq2seq model attend to the encoder: no parallel layout there."""
    if not isinstance(spec, Seq2SeqSpec):
        return
    bad = [i for i in range(spec.stacks["decoder"]) if spec.block_for(i, "decoder").layout == "parallel"]
    if not bad:
        return
    where = next((f"layers[{j}].layout" for j, o in enumerate(spec.layers)
                  if o.layout == "parallel" and o.stack in ("decoder", "both")), "block.layout")
    yield Problem(where, f"decoder layers {bad} would use the parallel layout, which has no place "
                  "for cross-attention; use pre_norm or post_norm, or give the parallel layout to "
                  "the encoder only (layers: [{stack: encoder, select: all, layout: parallel}])")


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
    problems = [*_heads(spec), *_overrides(spec), *_vit(spec), *_cross_attention_layouts(spec)]
    if problems:
        return problems  # the sizes below would be meaningless
    problems = list(size_problems(spec))
    if problems:
        return problems  # no component check is worth running on a model that cannot exist
    dims = dims_of(spec)
    for path, config in _components(spec, []):
        problems += [Problem(format_path(path), msg) for msg in config.check(dims)]
    return problems
