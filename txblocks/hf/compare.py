"""Where two specs differ in what determines a model's numbers.

``to_hf`` maps a spec to an HF config, maps that config back to a spec, and compares the
two here. Ignored: the name, the attention kernel (every kernel gives the same numbers)
and how a value is written (``qkv_bias: null`` vs the ``bias`` it defaults to, a default
ffn width, per-layer overrides vs the same values in ``block``): each layer's resolved
block is compared.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from txblocks.errors import Problem
from txblocks.hf.family import close, ffn_hidden
from txblocks.spec.models import ModelSpec

__all__ = ["differences"]

_WRITTEN_TWO_WAYS = {
    "name", "extends", "block", "layers", "final_norm", "head_dim", "n_kv_heads",
    "decoder_layers", "cross_attention",
}  # fmt: skip


def _attention(data: dict[str, Any]) -> dict[str, Any]:
    data.pop("kernel", None)  # every kernel gives the same numbers
    bias = data.pop("bias")
    for key in ("qkv_bias", "out_bias"):
        data[key] = bias if data[key] is None else data[key]
    return data


def _semantics(spec: ModelSpec) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The top-level fields, and each layer's resolved block (by label), as plain data."""
    top = spec.model_dump(mode="json", exclude=_WRITTEN_TWO_WAYS)
    top.update(head_dim=spec.head_size, n_kv_heads=spec.kv_heads, final_norm=spec.use_final_norm)
    stacks = dict(spec.stacks)
    top["stacks"] = stacks
    blocks = {}
    for stack, n_layers in stacks.items():
        for i in range(n_layers):
            block = spec.block_for(i, stack)
            data = block.model_dump(mode="json")
            _attention(data["attention"])
            if isinstance(data["ffn"], dict) and data["ffn"].get("hidden", 0) is None:
                data["ffn"]["hidden"] = ffn_hidden(block.ffn, spec.d_model)
            cross = getattr(spec, "cross_attention_for", None)
            if cross is not None and stack == "decoder" and "encoder" in stacks:
                data["cross_attention"] = _attention(cross(i).model_dump(mode="json"))
            blocks[f"{stack} layer {i}" if len(stacks) > 1 else f"layer {i}"] = data
    return top, blocks


def _diff(a: Any, b: Any, path: str) -> Iterator[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        if "type" in a and a.get("type") != b.get("type"):  # another component: show it whole
            yield path, a, b
            return
        for key in sorted(set(a) | set(b), key=str):
            yield from _diff(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            yield from _diff(x, y, f"{path}[{i}]")
    elif not close(a, b):
        yield path, a, b


def differences(spec: ModelSpec, back: ModelSpec, config_class: str) -> list[Problem]:
    """Each field where ``back`` differs from ``spec``; one found in every layer is ``block.*``."""
    (top, blocks), (top_back, blocks_back) = _semantics(spec), _semantics(back)
    found = list(_diff(top, top_back, ""))
    by_path: dict[tuple[str, str, str], tuple[Any, Any, list[str]]] = {}
    for label, data in blocks.items():
        if label not in blocks_back:
            continue  # a different number of layers, reported at the top level
        for path, a, b in _diff(data, blocks_back[label], ""):
            by_path.setdefault((path, repr(a), repr(b)), (a, b, []))[2].append(label)
    for (path, _, _), (a, b, labels) in by_path.items():
        if len(labels) == len(blocks):
            found.append((f"block.{path}", a, b))
        else:
            found.append((f"{', '.join(labels)}: {path}", a, b))
    return [
        Problem(path, f"the model has {a!r}; {config_class} can only give {b!r}")
        for path, a, b in found
    ]
