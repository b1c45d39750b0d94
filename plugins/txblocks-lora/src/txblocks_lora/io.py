"""Adapter weights on their own: a state dict, and safetensors files (no pickle).

A file holds ``<module>.lora_A`` and ``<module>.lora_B`` for every LoRA layer, and in
its metadata (strings, as safetensors requires):

- ``format``: ``txblocks-lora``; ``format_version``: ``1``
- ``configs``: JSON list of the :class:`LoRAConfig` of each adapter that was applied
- ``modules``: JSON ``{module: {rank, alpha, dropout, config}}`` (``config`` indexes
  ``configs``, or is null for a layer built by hand)
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from txblocks_lora.apply import lora_layers, mark_only_lora_trainable, wrap
from txblocks_lora.config import LoRAConfig
from txblocks_lora.errors import LoRAError

__all__ = ["FORMAT", "load_adapters", "lora_state_dict", "save_adapters"]

FORMAT = "txblocks-lora"
FORMAT_VERSION = "1"
_KEYS = ("lora_A", "lora_B")


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapter tensors only (``<module>.lora_A``, ``<module>.lora_B``), as in state_dict()."""
    return {
        f"{name}.{key}": getattr(layer, key).detach()
        for name, layer in lora_layers(model).items()
        for key in _KEYS
    }


def save_adapters(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Write the adapter tensors and their configs to a safetensors file at ``path``.

    Raises:
        LoRAError: the model has no LoRA layer.
    """
    layers = lora_layers(model)
    if not layers:
        raise LoRAError("the model has no LoRA layer: nothing to save")
    configs: list[dict[str, Any]] = []
    index: dict[int, int] = {}
    modules: dict[str, dict[str, Any]] = {}
    for name, layer in layers.items():
        number = None
        if layer.config is not None:
            if id(layer.config) not in index:
                index[id(layer.config)] = len(configs)
                configs.append(layer.config.model_dump(mode="json"))
            number = index[id(layer.config)]
        p = layer.lora_dropout.p if isinstance(layer.lora_dropout, nn.Dropout) else 0.0
        modules[name] = {"rank": layer.rank, "alpha": layer.alpha, "dropout": p, "config": number}
    tensors = {k: v.contiguous() for k, v in lora_state_dict(model).items()}
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "configs": json.dumps(configs),
        "modules": json.dumps(modules),
    }
    save_file(tensors, os.fspath(path), metadata=metadata)


def _read(
    path: str | os.PathLike[str],
) -> tuple[dict[str, Tensor], dict[str, Any], list[LoRAConfig]]:
    with safe_open(os.fspath(path), framework="pt", device="cpu") as f:
        metadata = f.metadata() or {}
        tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    if metadata.get("format") != FORMAT:
        raise LoRAError(f"{path} is not a {FORMAT} adapter file (its metadata has no "
                        f"format={FORMAT!r}); write one with save_adapters()")
    try:
        modules = json.loads(metadata["modules"])
        configs = [LoRAConfig.model_validate({k: v for k, v in c.items() if k != "type"})
                   for c in json.loads(metadata["configs"])]
    except (KeyError, ValueError, TypeError, ValidationError) as exc:
        raise LoRAError(f"{path}: unreadable {FORMAT} metadata: {exc}") from None
    return tensors, modules, configs


def _wrap_from_file(model: nn.Module, path: str | os.PathLike[str], tensors: dict[str, Tensor],
                    modules: dict[str, Any], configs: list[LoRAConfig]) -> None:
    """Put the file's adapters on a model that has none (same base architecture)."""
    present = dict(model.named_modules())
    problems = []
    for name in modules:
        base = present.get(name)
        if not isinstance(base, nn.Linear):
            problems.append(f"{name} (no nn.Linear of that name in the model)")
            continue
        a, b = tensors.get(f"{name}.lora_A"), tensors.get(f"{name}.lora_B")
        if a is not None and b is not None and (a.shape[1], b.shape[0]) != (
                base.in_features, base.out_features):
            problems.append(f"{name} (in/out {a.shape[1]}/{b.shape[0]} in the file, "
                            f"{base.in_features}/{base.out_features} in the model)")
    if problems:
        raise LoRAError(f"cannot load adapters from {path}: the model has no LoRA layer and these "
                        f"adapters do not fit its linear layers: {', '.join(problems)}")
    freeze = False
    for name, info in modules.items():
        config = configs[info["config"]] if info.get("config") is not None else None
        wrap(model, name, int(info["rank"]), float(info["alpha"]), float(info["dropout"]), config)
        freeze |= config is None or config.freeze_base
    if freeze:
        mark_only_lora_trainable(model)


def load_adapters(model: nn.Module, path: str | os.PathLike[str]) -> list[str]:
    """Load adapter tensors written by :func:`save_adapters` into ``model``.

    A model without LoRA layers first gets the file's adapters (same modules, ranks,
    alphas; base frozen as its configs say). Merged layers are unmerged, loaded and
    merged again.

    Returns:
        The names of the LoRA layers loaded.

    Raises:
        LoRAError: not an adapter file, or its tensors do not fit: the message lists
            the missing names (in the model only), the unexpected ones (in the file
            only) and the mismatched ones (shape, or alpha/rank). Nothing is loaded then.
    """
    tensors, modules, configs = _read(path)
    if not lora_layers(model):
        _wrap_from_file(model, path, tensors, modules, configs)
    layers = lora_layers(model)
    expected = lora_state_dict(model)
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    mismatched = [
        f"{k} (shape {tuple(tensors[k].shape)} in the file, {tuple(v.shape)} in the model)"
        for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape
    ]
    for name, info in modules.items():
        layer = layers.get(name)
        if layer is not None and not math.isclose(info["alpha"] / info["rank"], layer.scaling,
                                                  rel_tol=1e-6):
            mismatched.append(f"{name} (alpha/rank {info['alpha']:g}/{info['rank']} in the file, "
                              f"{layer.alpha:g}/{layer.rank} in the model)")
    if missing or unexpected or mismatched:
        lines = [f"cannot load adapters from {path}:"]
        for label, names in (("missing (in the model, not in the file)", missing),
                             ("unexpected (in the file, not in the model)", unexpected),
                             ("mismatched", mismatched)):
            if names:
                lines.append(f"  {label}: {', '.join(names)}")
        raise LoRAError("\n".join(lines))
    with torch.no_grad():
        for name, layer in layers.items():
            merged = layer.merged
            layer.unmerge()
            layer.lora_A.copy_(tensors[f"{name}.lora_A"])
            layer.lora_B.copy_(tensors[f"{name}.lora_B"])
            if merged:
                layer.merge()
    return list(layers)
