"""Hugging Face folders <-> txblocks checkpoint files: what ``txblocks convert`` runs.

A folder becomes one ``.safetensors`` file of :func:`txblocks.save` (spec in the header),
which also records the model's :class:`~txblocks.hf.HFOrigin` (family, class, token ids)
under the metadata key ``hf_origin``; a file becomes a folder through
:func:`~txblocks.hf.export.save_pretrained`, to the family recorded there when there is one.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from txblocks.hf.convert import HFOrigin
from txblocks.hf.export import DEFAULT_SHARD_SIZE, save_pretrained
from txblocks.hf.pretrained import from_pretrained
from txblocks.registry import Registry

__all__ = ["ORIGIN_KEY", "convert_checkpoint", "file_to_folder", "folder_to_file"]

#: Metadata key of a txblocks file that holds the model's ``hf_origin`` (JSON).
ORIGIN_KEY = "hf_origin"
PathLike = str | os.PathLike[str]


def folder_to_file(
    src: PathLike,
    dst: PathLike,
    *,
    dtype: torch.dtype | None = None,
    registry: Registry | None = None,
) -> nn.Module:
    """Read the Hugging Face folder ``src`` (:func:`~txblocks.hf.pretrained.from_pretrained`)
    and write it as the txblocks checkpoint ``dst`` (:func:`txblocks.save`).

    Returns:
        The model read.

    Raises:
        HFConversionError: the folder cannot be read (every problem listed).
        CheckpointError: ``dst`` cannot be written.
    """
    from txblocks.checkpoint import save

    model = from_pretrained(src, dtype=dtype, registry=registry)
    save(model, dst, metadata={ORIGIN_KEY: json.dumps(asdict(model.hf_origin))})
    return model


def _origin(path: Path) -> HFOrigin | None:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            text = (f.metadata() or {}).get(ORIGIN_KEY)
        data: Any = json.loads(text) if text else None
        return HFOrigin(**data) if isinstance(data, dict) else None
    except (SafetensorError, OSError, TypeError, ValueError):
        return None  # load() reports an unreadable file; a bad origin is only a default


def file_to_folder(
    src: PathLike,
    dst: PathLike,
    *,
    max_shard_size: int | str = DEFAULT_SHARD_SIZE,
    family: str | None = None,
    registry: Registry | None = None,
) -> list[str]:
    """Load the txblocks checkpoint ``src`` (:func:`txblocks.load`) and write it as the
    Hugging Face folder ``dst`` (:func:`~txblocks.hf.export.save_pretrained`).

    Returns:
        The names of the files written in ``dst``.

    Raises:
        CheckpointError: ``src`` cannot be loaded.
        HFConversionError: no family can express its spec (every reason listed).
    """
    from txblocks.checkpoint import load

    path = Path(src)
    model = load(path, registry=registry)
    origin = _origin(path)
    if origin is not None:
        model.hf_origin = origin
    return save_pretrained(model, dst, max_shard_size=max_shard_size, family=family,
                           registry=registry)  # fmt: skip


def convert_checkpoint(
    src: PathLike,
    dst: PathLike,
    *,
    dtype: torch.dtype | None = None,
    max_shard_size: int | str = DEFAULT_SHARD_SIZE,
    family: str | None = None,
    registry: Registry | None = None,
) -> str:
    """Convert either way, by what ``src`` is: a folder -> the txblocks file ``dst``
    (:func:`folder_to_file`); a file -> the Hugging Face folder ``dst`` (:func:`file_to_folder`).

    Returns:
        A one-line summary of what was written, for the CLI.

    Raises:
        HFConversionError, CheckpointError: as the two functions; ``FileNotFoundError`` when
            ``src`` does not exist.
    """
    source = Path(src)
    if source.is_dir():
        model = folder_to_file(source, dst, dtype=dtype, registry=registry)
        n = sum(p.numel() for p in model.parameters())
        return f"{source} ({model.hf_origin.hf_class}, {n:,} parameters) -> {dst}"
    if source.is_file():
        files = file_to_folder(source, dst, max_shard_size=max_shard_size, family=family,
                               registry=registry)  # fmt: skip
        return f"{source} -> {dst}/ ({', '.join(files)})"
    raise FileNotFoundError(f"{source}: no such file or folder")
