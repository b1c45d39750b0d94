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
from txblocks.spec.models import ModelSpec, Seq2SeqSpec, TextSpec, VitSpec

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
        grid=(spec.image_hw[0] // spec.patch_hw[0], spec.image_hw[1] // spec.patch_hw[1])
        if isinstance(spec, VitSpec) else None,
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


def _set_by(override: Any, name: str) -> Any:
    """The value an override gives ``name`` (``attention.qk_norm``: a field of its attention)."""
    head, _, tail = name.partition(".")
    value = getattr(override, head, None)
    return getattr(value, tail, None) if tail and value is not None else value


def _path(spec: ModelSpec, stack: str, index: int, fields: tuple[str, ...]) -> str:
    """Where layer ``index`` of ``stack`` gets ``fields``: the last override that sets one of
    them (``layers[j].<field>``), else ``block.<fields[0]>``."""
    n_layers = spec.stacks[stack]  # type: ignore[index]
    for j in reversed(range(len(spec.layers))):
        override = spec.layers[j]
        if override.stack in (stack, "both") and override.selects(index, n_layers):
            for name in fields:
                if _set_by(override, name) is not None:
                    return f"layers[{j}].{name}"
    return f"block.{fields[0]}"


def _block_combinations(spec: ModelSpec) -> Iterator[Problem]:
    """Block fields that cannot go together, each reported once with the layers it hits."""
    found: dict[tuple[str, str, str], list[int]] = {}
    for stack, n_layers in spec.stacks.items():
        for i in range(n_layers if spec.layers else 1):  # no overrides: every layer is alike
            block = spec.block_for(i, stack)
            reasons = []
            if block.shared_norm and block.layout != "parallel":
                reasons.append((("shared_norm", "layout"), (
                    f"true needs layout: parallel (one norm feeding attention and ffn), got "
                    f"layout {block.layout!r}")))
            if block.layout == "reordered_norm" and (block.post_attention_norm or block.post_ffn_norm):
                field = "post_attention_norm" if block.post_attention_norm else "post_ffn_norm"
                reasons.append(((field, "layout"), (
                    "layout reordered_norm already norms each branch's output (x + norm(f(x))); "
                    "set post_attention_norm and post_ffn_norm to false, or use pre_norm")))
            attention = block.attention
            if attention.qk_norm_over == "width" and attention.qk_norm is None:
                reasons.append((("attention.qk_norm_over", "attention.qk_norm"), (
                    "'width' says what attention.qk_norm normalizes, and there is no qk_norm; "
                    "set attention.qk_norm (e.g. rmsnorm)")))
            for fields, message in reasons:
                found.setdefault((_path(spec, stack, i, fields), message, stack), []).append(i)
    for (path, message, stack), layers in found.items():
        where = f"{stack} layers" if len(spec.stacks) > 1 else "layers"
        yield Problem(path, f"{message} ({where} {layers})" if spec.layers else message)


def _embedding(spec: ModelSpec) -> Iterator[Problem]:
    """The embedding width, its projections and a tied head's table must fit together."""
    if not isinstance(spec, TextSpec):
        return
    embedding = spec.embedding
    if embedding.project_out and embedding.width is None:
        yield Problem("embedding.project_out", "project_out projects the output back to "
                      "embedding.width, and there is no width; set embedding.width")
        return
    if embedding.project_out and isinstance(spec, Seq2SeqSpec):
        yield Problem("embedding.project_out", "seq2seq models cannot project their output to "
                      "the embedding width (the encoder output feeds cross-attention at d_model); "
                      "set it to false")
        return
    head = spec.head
    table = embedding.width or spec.d_model
    hidden = table if embedding.project_out else spec.d_model
    if getattr(head, "type", None) == "lm" and getattr(head, "tie_embeddings", False) \
            and table != hidden:
        yield Problem("head.tie_embeddings", (
            f"a tied lm head reads the token table, {table} wide (embedding.width), and the "
            f"hidden states are {hidden} wide (d_model); set embedding.project_out: true to "
            "project them back, or head.tie_embeddings: false"))


def _share_layers(spec: ModelSpec) -> Iterator[Problem]:
    """Shared layers: runs that divide each stack, and one block per run."""
    share = spec.share_layers
    if share is None:
        return
    for stack, n_layers in spec.stacks.items():
        if n_layers % share.groups:
            where = f"the {stack} stack's " if len(spec.stacks) > 1 else ""
            yield Problem("share_layers.groups", (
                f"{share.groups} groups do not divide {where}{n_layers} layers; use one of "
                f"{_divisors(n_layers)}"))
            return
    no_mask = {"attention": {"mask"}}
    for stack, n_layers in spec.stacks.items():
        blocks: dict[int, dict[str, Any]] = {}
        for i in range(n_layers):
            first = share.first_of(i, n_layers)
            block = spec.block_for(i, stack).model_dump(exclude=no_mask)  # type: ignore[arg-type]
            if first == i:
                blocks[i] = block
                continue
            differ = sorted(k for k in block if block[k] != blocks[first][k])
            if differ:
                yield Problem("share_layers", (
                    f"{stack} layers {first} and {i} share one block, and their overrides make "
                    f"them differ ({', '.join(differ)}); give the layers of a run the same block "
                    "(masks may differ), or change share_layers.groups"))
                return


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
    problems = [*_heads(spec), *_overrides(spec), *_vit(spec)]
    if problems:
        return problems  # the sizes below would be meaningless
    problems = list(size_problems(spec))
    if problems:
        return problems  # no component check is worth running on a model that cannot exist
    # each layer's block, through the overrides: after the layer count is known to be sane
    problems = [*_block_combinations(spec), *_cross_attention_layouts(spec), *_embedding(spec),
                *_share_layers(spec)]
    if problems:
        return problems
    dims = dims_of(spec)
    for path, config in _components(spec, []):
        problems += [Problem(format_path(path), msg) for msg in config.check(dims)]
    return problems
