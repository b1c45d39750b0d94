"""Putting LoRA adapters on a model, folding them in and choosing what trains."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from fnmatch import fnmatchcase
from typing import Any

import txblocks
from torch import nn
from txblocks.errors import did_you_mean

from txblocks_lora.config import DEFAULT_TARGETS, LoRAConfig
from txblocks_lora.errors import LoRAError
from txblocks_lora.layer import LoRALinear

__all__ = [
    "apply_lora",
    "lora_layers",
    "lora_parameters",
    "mark_only_lora_trainable",
    "merge",
    "unmerge",
]


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Every :class:`LoRALinear` of ``model`` by module name, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapter parameters (``lora_A``, ``lora_B`` of every layer), e.g. for an optimizer."""
    return [p for layer in lora_layers(model).values() for p in (layer.lora_A, layer.lora_B)]


def mark_only_lora_trainable(model: nn.Module) -> None:
    """Set ``requires_grad`` on the adapter parameters only; every other parameter is frozen.

    Raises:
        LoRAError: the model has no LoRA layer (everything would be frozen).
    """
    adapters = lora_parameters(model)
    if not adapters:
        raise LoRAError("the model has no LoRA layer; apply_lora(model, config) first")
    for param in model.parameters():
        param.requires_grad_(False)
    for param in adapters:
        param.requires_grad_(True)


def _collapse(name: str) -> str:
    """``blocks.3.ffn.up`` -> ``blocks.*.ffn.up`` (layer indices as a wildcard)."""
    return ".".join("*" if part.isdigit() else part for part in name.split("."))


def _suggestions(names: Iterable[str]) -> list[str]:
    """Patterns a spec writer may have meant: ``blocks.*.ffn.up``, ``*.ffn.up``, ``*.ffn.*``, …"""
    out: set[str] = set()
    for name in names:
        parts = _collapse(name).split(".")
        out.add(".".join(parts))
        for i in range(1, len(parts)):
            out.add("*." + ".".join(parts[i:]))
            out.add("*." + ".".join(parts[i - 1 : -1]) + ".*")
    return sorted(out)


def _listing(names: Iterable[str]) -> str:
    return ", ".join(dict.fromkeys(_collapse(n) for n in names)) or "(none)"


def _match(model: nn.Module, config: LoRAConfig, where: str) -> list[str]:
    """Names of the linear layers that ``config.targets`` selects, in module order."""
    modules = dict(model.named_modules())
    linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
    default = list(config.targets) == list(DEFAULT_TARGETS)
    problems, chosen = [], set()
    for j, pattern in enumerate(config.targets):
        hits = [n for n in linears if fnmatchcase(n, pattern)]
        chosen.update(hits)
        if hits or default:
            continue
        others = [n for n in modules if n and fnmatchcase(n, pattern)]
        besides = (f" (it matches {_listing(others)}, which {'is' if len(others) == 1 else 'are'} "
                   "not nn.Linear)" if others else "")
        hint = did_you_mean(pattern, _suggestions(linears))
        problems.append(
            f"{where}targets[{j}]: {pattern!r} matches no nn.Linear{besides}; linear modules "
            f"(layer indices as *): {_listing(linears)}{hint}"
        )
    if default and not chosen:
        problems.append(
            f"{where}targets: none of the default targets ({', '.join(DEFAULT_TARGETS)}) matches "
            f"an nn.Linear; linear modules (layer indices as *): {_listing(linears)}"
        )
    if problems:
        raise LoRAError("\n".join(problems))
    wrapped = [n for n in linears if n in chosen and isinstance(modules[n], LoRALinear)]
    if wrapped:
        raise LoRAError(
            f"{where}targets: {_listing(wrapped)} already {'has' if len(wrapped) == 1 else 'have'} "
            "a LoRA adapter; give each adapter targets of its own"
        )
    return [n for n in linears if n in chosen]


def _replace(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Put ``new`` wherever ``old`` is a child (a shared module stays shared)."""
    for parent in model.modules():
        for key, child in parent._modules.items():
            if child is old:
                setattr(parent, key, new)


def wrap(model: nn.Module, name: str, rank: int, alpha: float, dropout: float,
         config: LoRAConfig | None = None) -> LoRALinear:
    """Replace the linear layer ``name`` of ``model`` by a fresh :class:`LoRALinear`."""
    base = model.get_submodule(name)
    layer = LoRALinear(base, rank, alpha, dropout)  # type: ignore[arg-type]
    layer.config = config
    _replace(model, base, layer)
    return layer


def apply_lora(model: nn.Module, config: LoRAConfig | None = None, *, where: str = "",
               record: bool = True, **params: Any) -> list[str]:
    """Wrap every ``nn.Linear`` that ``config.targets`` matches in a :class:`LoRALinear`.

    This is what the plugin's ``txblocks_after_build`` hook does for each
    ``{type: lora, ...}`` in a spec's ``adapters``; call it directly on any model.

    Args:
        model: modified in place.
        config: the adapter; or give its fields as keyword arguments
            (``apply_lora(model, rank=4, targets=["*.ffn.*"])``).
        where: a prefix for error paths (``"adapters[0]"``).
        record: add the adapter to ``model.spec.adapters`` (when the model has a spec), so
            that ``txblocks.save`` / ``txblocks.load`` rebuild it; the build hook, which
            applies adapters the spec already lists, passes False.

    Returns:
        The names of the wrapped modules, in module order.

    Raises:
        LoRAError: a pattern of your own matches no ``nn.Linear`` (the message lists
            the linear modules and the closest pattern), none of the default targets
            matches, or a matched layer already has an adapter.
    """
    if config is None:
        config = LoRAConfig(**params)
    elif params:
        config = type(config).model_validate({**config.model_dump(), **params})
    prefix = f"{where}." if where else ""
    names = _match(model, config, prefix)
    spec = _recorded(model, config) if record else None
    for name in names:
        wrap(model, name, config.rank, config.alpha, config.dropout, config)
    if config.freeze_base:
        mark_only_lora_trainable(model)
    if spec is not None:
        model.spec = spec
    return names


def _recorded(model: nn.Module, config: LoRAConfig) -> Any:
    """``model.spec`` with ``config`` added to its adapters, or None (no spec, or the
    installed registry cannot express it: then a warning says save/load will not rebuild it)."""
    spec = getattr(model, "spec", None)
    if spec is None:
        return None
    data = spec.model_dump(mode="json", exclude_none=True)
    data["adapters"] = [*data.get("adapters", []), {"type": "lora", **config.model_dump(mode="json")}]
    try:
        return txblocks.load_spec(data)
    except txblocks.SpecError as exc:
        warnings.warn(f"LoRA applied, but model.spec cannot list it ({exc}); txblocks.save "
                      "will write a spec without the adapter", stacklevel=3)
        return None


def _tied(model: nn.Module) -> dict[int, set[int]]:
    """For each parameter (by id), the modules (by id) that hold it."""
    owners: dict[int, set[int]] = {}
    for module in model.modules():
        for param in module._parameters.values():
            if param is not None:
                owners.setdefault(id(param), set()).add(id(module))
    return owners


def merge(model: nn.Module) -> list[str]:
    """Fold ``B A · alpha/rank`` into the base weight of every LoRA layer.

    Forward then computes the plain linear maps (same outputs, no adapter cost).
    :func:`unmerge` undoes it. Merged layers are skipped.

    Returns:
        The names of the layers merged by this call.

    Raises:
        LoRAError: a layer's weight is shared with another module (a tied embedding):
            merging would change that module too. Nothing is merged then.
    """
    layers = {n: m for n, m in lora_layers(model).items() if not m.merged}
    owners = _tied(model)
    shared = [n for n, m in layers.items() if len(owners[id(m.weight)]) > 1]
    if shared:
        raise LoRAError(
            f"cannot merge {', '.join(shared)}: the weight is shared with another module "
            "(tied embeddings), which merging would change too"
        )
    for layer in layers.values():
        layer.merge()
    return list(layers)


def unmerge(model: nn.Module) -> list[str]:
    """Subtract what :func:`merge` added; returns the names of the layers unmerged."""
    layers = {n: m for n, m in lora_layers(model).items() if m.merged}
    for layer in layers.values():
        layer.unmerge()
    return list(layers)
