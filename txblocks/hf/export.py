"""Hugging Face folders out: ``save_pretrained`` writes ``config.json`` and safetensors
shards that ``transformers``' ``from_pretrained`` loads, without a ``transformers`` model
in memory.

The family, head and config come from ``to_hf``'s own logic (the spec mapped to a config
and back, every difference a reason). The weights go through the family's rules in the
``to_hf`` direction into a skeleton of the ``transformers`` model built on the ``meta``
device (its names, shapes and ties; nothing allocated), then to shards of at most
``max_shard_size``, each written as soon as it is full. Tied tensors are written once,
under the name ``transformers`` keeps (``lm_head.weight`` tied to the embeddings is
left out), and ``transformers``' conversions are reverted as its ``save_pretrained``
does (Mixtral's stacked experts go back to one tensor per expert).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from txblocks.hf.convert import _new_hf, target_family
from txblocks.hf.shards import INDEX, WEIGHTS, ShardWriter, parse_size
from txblocks.hf.weights import LiveTensors, transfer
from txblocks.registry import Registry

__all__ = ["DEFAULT_SHARD_SIZE", "save_pretrained"]

DEFAULT_SHARD_SIZE = "5GB"
#: Files next to a model's ``tokenizer.json`` that are copied with it.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
_SHARD = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
PathLike = str | os.PathLike[str]


class _Sink(LiveTensors):
    """An HF model skeleton (``meta``) as the HF side of ``to_hf``: each tensor written goes
    to the shard writer once complete (a stacked tensor when all its slices are in)."""

    def __init__(self, skeleton: nn.Module, writer: ShardWriter) -> None:
        super().__init__(skeleton)
        tied = set(getattr(skeleton, "all_tied_weights_keys", None) or {})
        skip = set(getattr(skeleton, "_keys_to_ignore_on_save", None) or ())
        names: dict[int, list[str]] = {}
        for name, tensor in self._state.items():
            names.setdefault(id(tensor), []).append(name)
        # the name transformers keeps for a tie: one that is not a tie's target
        self._name = {k: next((n for n in ns if n not in tied), ns[0]) for k, ns in names.items()}
        self._skip = skip
        self._writer = writer
        self._partial: dict[Hashable, tuple[Tensor, set[int]]] = {}
        self._done: set[Hashable] = set()

    def write(self, name: str, value: Tensor, index: int | None) -> None:
        target = self._state[name]
        key = id(target)
        if key in self._done:  # a tied name written again (alias rules)
            return
        if index is None:
            self._emit(key, value)
            return
        buffer, seen = self._partial.setdefault(
            key, (torch.empty(target.shape, dtype=value.dtype, device=value.device), set())
        )
        buffer[index].copy_(value)
        seen.add(index)
        if len(seen) == target.shape[0]:
            del self._partial[key]
            self._emit(key, buffer)

    def _emit(self, key: Hashable, value: Tensor) -> None:
        self._done.add(key)
        name = self._name[key]  # type: ignore[index]
        if name not in self._skip:
            self._writer.add(name, value)


def _revert(skeleton: nn.Module) -> Any:
    """``transformers``' reversal of its load-time conversions, for one shard's tensors."""
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:
        return None
    return lambda tensors: revert_weight_conversion(skeleton, tensors)


def _stale(folder: Path, written: list[str]) -> list[Path]:
    """Weight files of an earlier save that the new one does not replace."""
    return [
        p for p in folder.iterdir()
        if p.name not in written and (p.name in (WEIGHTS, INDEX) or _SHARD.fullmatch(p.name))
    ]  # fmt: skip


def _copy_tokenizer(model: nn.Module, folder: Path) -> None:
    source = getattr(model, "tokenizer_path", None)
    if not source or not Path(source).is_file():
        return
    source = Path(source)
    for name in TOKENIZER_FILES:
        path = source if name == "tokenizer.json" else source.parent / name
        if path.is_file() and path.resolve() != (folder / name).resolve():
            shutil.copyfile(path, folder / name)


def save_pretrained(
    model: nn.Module,
    path: PathLike,
    *,
    max_shard_size: int | str = DEFAULT_SHARD_SIZE,
    family: str | None = None,
    registry: Registry | None = None,
) -> list[str]:
    """Write ``model`` as a Hugging Face folder that ``transformers`` loads.

    ``AutoModelFor...from_pretrained(path)`` (or the class ``config.architectures`` names)
    then gives the model ``to_hf(model)`` would, with the same logits. The folder gets
    ``config.json`` (``architectures``, ``dtype``), ``model.safetensors`` or shards with
    ``model.safetensors.index.json``, and the tokenizer files of a model that has a
    ``tokenizer_path`` (one from :func:`txblocks.from_pretrained`). Weight files of an
    earlier save in the folder are replaced.

    Args:
        model: a txblocks model with ``.spec``.
        path: the folder (created if needed).
        max_shard_size: bytes, or a string such as ``"500MB"`` / ``"5GB"``; a tensor larger
            than this gets a shard of its own.
        family: as in :func:`txblocks.hf.to_hf`: default the family the model came from,
            then the first that can express the spec.
        registry: for plugin families; default :func:`txblocks.default_registry`.

    Returns:
        The names of the files written.

    Raises:
        HFConversionError: no family can express the spec (each one's reasons listed), or
            the weights do not correspond to the family's rules.
        ValueError: ``max_shard_size`` is not a size.
    """
    limit = parse_size(max_shard_size)
    chosen, head, config = target_family(model, family, registry, action="save_pretrained")
    spec = model.spec
    skeleton = _new_hf(head, config, spec, meta=True)
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    dtype = next(model.parameters()).dtype
    writer = ShardWriter(folder, limit, {"format": "pt"}, convert=_revert(skeleton))
    try:
        transfer(model, _Sink(skeleton, writer), chosen, head, to_hf=True)
        written = writer.finish(before=lambda names: [p.unlink() for p in _stale(folder, names)])
    except BaseException:
        writer.abort()
        raise
    config.architectures = [head.hf_class]
    config.dtype = dtype
    config.save_pretrained(str(folder))
    _copy_tokenizer(model, folder)
    return ["config.json", *written]
