"""Hugging Face folders in: ``from_pretrained`` reads ``config.json`` and safetensors shards
into a txblocks model, one tensor at a time, without building the ``transformers`` model.

The txblocks model is built on the ``meta`` device (:func:`txblocks.build.build_on_meta`),
every weight is checked against the family's rules (names, shapes, nothing left over) on
``meta`` tensors, and only then is each tensor read, transformed by its rule and made the
txblocks parameter: each parameter is allocated once, and the file is never mapped, so
the memory held is the model's plus the tensor being read. See ``docs/pretrained.md``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from txblocks.errors import Problem
from txblocks.hf.convert import CARRIED, HFOrigin, _family_of, _head_of, _load, _spec_data
from txblocks.hf.family import HFConversionError, HFFamily, HFHead
from txblocks.hf.folder import FolderTensors, hf_class_of
from txblocks.hf.shards import Shards
from txblocks.hf.weights import transfer
from txblocks.registry import Registry

__all__ = ["CONFIG", "TOKENIZER", "from_pretrained"]

CONFIG = "config.json"
TOKENIZER = "tokenizer.json"
PathLike = str | os.PathLike[str]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_config(folder: Path) -> tuple[Any, list[Problem]]:
    """The folder's ``transformers`` config (local files only), or why there is none."""
    if not (folder / CONFIG).is_file():
        return None, [Problem(CONFIG, "not found")]
    try:
        from transformers import AutoConfig
    except ImportError:
        why = "reading it needs transformers (the hf extra): pip install 'txblocks[hf]'"
        return None, [Problem(CONFIG, why)]
    try:
        return AutoConfig.from_pretrained(str(folder), local_files_only=True), []
    # transformers raises OSError, ValueError, KeyError, strict-dataclass errors...
    except Exception as exc:  # noqa: BLE001
        return None, [Problem(CONFIG, _first_line(exc))]


def _dtype_of(config: Any, shards: Shards) -> torch.dtype:
    """The config's ``dtype`` (``torch_dtype`` in transformers 4), else the files' floating
    dtype when they agree, else torch's default."""
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(value, str):
        value = getattr(torch, value.removeprefix("torch."), None)
    if isinstance(value, torch.dtype) and value.is_floating_point:
        return value
    floats = shards.dtypes()
    return floats.pop() if len(floats) == 1 else torch.get_default_dtype()


def _classes(family: HFFamily, head: HFHead) -> tuple[type, type | None, list[Problem]]:
    """The ``transformers`` classes of ``head`` and of the family's base model."""
    try:
        cls = hf_class_of(head.hf_class)
    except (ImportError, AttributeError) as exc:
        return object, None, [Problem("class", f"{head.hf_class}: {_first_line(exc)}")]
    base = next((h.hf_class for h in family.heads if h.head_type is None), None)
    try:
        return cls, (hf_class_of(base) if base else None), []
    except (ImportError, AttributeError):
        return cls, None, []


class _Materializer:
    """Gives each tensor of a model built on ``meta`` its value, once: the value read
    becomes the parameter (no second copy where dtype and device already fit), and every
    module that shares the tensor (tied weights) gets the same one."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.device = device
        self._owners: dict[int, list[tuple[dict[str, Any], str]]] = {}
        for module in model.modules():
            for table in (module._parameters, module._buffers):
                for attr, tensor in table.items():
                    if tensor is not None:
                        self._owners.setdefault(id(tensor), []).append((table, attr))
        self._storages: set[int] = set()

    def put(self, name: str, tensor: Tensor, value: Tensor) -> None:
        value = value.to(device=self.device, dtype=tensor.dtype)
        storage = value.untyped_storage()
        whole = (value.is_contiguous() and value.storage_offset() == 0
                 and storage.nbytes() == value.numel() * value.element_size())  # fmt: skip
        if not whole or storage.data_ptr() in self._storages:  # a view, or read twice
            value = value.clone(memory_format=torch.contiguous_format)
        self._storages.add(value.untyped_storage().data_ptr())
        if isinstance(tensor, nn.Parameter):
            value = nn.Parameter(value, requires_grad=tensor.requires_grad)
        for table, attr in self._owners[id(tensor)]:
            table[attr] = value


def _nothing(name: str, tensor: Tensor, value: Tensor) -> None:
    return None


@contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Modules built inside get their parameters on ``meta``, their buffers for real."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and not param.is_meta:
            param = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def _real_buffers(model: nn.Module, device: torch.device, dtype: torch.dtype,
                  registry: Registry | None) -> None:
    """Compute the buffers that no checkpoint holds (non-persistent: a sinusoidal table),
    left on ``meta`` by the build, by building the spec again with parameters on ``meta``."""
    from txblocks.build import build

    missing = [n for n, b in model.named_buffers(remove_duplicate=False) if b.is_meta]
    if not missing:
        return
    with _parameters_on_meta():
        donor = build(model.spec, device=device, dtype=dtype, registry=registry, allow_large=True)
    buffers = dict(donor.named_buffers(remove_duplicate=False))
    for name in missing:
        owner, _, attr = name.rpartition(".")
        model.get_submodule(owner).register_buffer(attr, buffers[name], persistent=False)


def _source(
    shards: Shards, config: Any, registry: Registry | None, what: str, problems: list[Problem]
) -> tuple[HFFamily, HFHead, FolderTensors]:
    """The family, head entry and tensors of a folder (raises with ``problems`` so far)."""
    try:
        family = _family_of(config, registry)
        head = _head_of(family, config, None)
    except HFConversionError as exc:
        raise HFConversionError(what, [*problems, *exc.problems]) from None
    cls, base, bad = _classes(family, head)
    if bad:
        raise HFConversionError(what, [*problems, *bad])
    tensors = FolderTensors(shards, config, cls, base, init_kwargs=dict(head.init_kwargs))
    return family, head, tensors


def _fill(
    tensors: FolderTensors, family: HFFamily, head: HFHead, config: Any, what: str,
    problems: list[Problem], *, dtype: torch.dtype, device: torch.device,
    registry: Registry | None,
) -> nn.Module:
    """The txblocks model, built on ``meta``, checked whole, then filled tensor by tensor."""
    from txblocks.build import build_on_meta

    data, unsupported = _spec_data(family, head, config, tensors.skeleton)
    if unsupported:
        what_spec = f"cannot convert {type(config).__name__} ({head.hf_class}) to txblocks"
        raise HFConversionError(f"{what_spec}: unsupported options", [*problems, *unsupported])
    spec = _load(data, registry)
    model = build_on_meta(spec, device=device, dtype=dtype, registry=registry)
    label = f"the folder ({head.hf_class})"
    tensors.dry = True  # every name and shape, before anything is allocated
    try:
        transfer(model, tensors, family, head, to_hf=False, put=_nothing, what=label)
    except HFConversionError as exc:
        problems = [*problems, *exc.problems]
    if problems:
        raise HFConversionError(what, problems)
    tensors.dry = False
    try:
        put = _Materializer(model, device).put
        transfer(model, tensors, family, head, to_hf=False, put=put, what=label)
    finally:
        tensors.forget()
    return model


def from_pretrained(
    path: PathLike,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    registry: Registry | None = None,
) -> nn.Module:
    """A txblocks model from a local Hugging Face folder, read shard by shard.

    Reads ``config.json`` (``transformers.AutoConfig``, local files only; no model class is
    instantiated), ``model.safetensors`` or the shards ``model.safetensors.index.json``
    lists, and notes ``tokenizer.json`` when there is one. The head follows the first class
    of ``config.architectures`` that the family maps (else the base model), as ``from_hf``
    of that class; every family ``from_hf`` knows, plugin families included, works.

    Args:
        path: the folder.
        dtype: of the parameters; default the config's ``dtype`` (``torch_dtype``), else
            the files' floating dtype when they agree, else torch's default.
        device: where the parameters go, one by one (default CPU).
        registry: components and plugin families; default :func:`txblocks.default_registry`.

    Returns:
        The model in eval mode, with ``.spec``, ``.hf_origin`` (:class:`HFOrigin`) and
        ``.tokenizer_path`` (the folder's ``tokenizer.json``, or None).

    Raises:
        HFConversionError: every problem of the folder at once: no or unreadable
            ``config.json``, an unknown ``model_type`` or class, options the mapping does
            not support, missing, truncated or corrupt shards, a tensor missing, extra or of
            the wrong shape. Nothing is allocated before all of it is checked.
    """
    folder = Path(path)
    what = f"cannot load the Hugging Face folder {folder}"
    if not folder.is_dir():
        why = "not a folder" if folder.exists() else "not found"
        raise HFConversionError(what, [Problem(str(folder), why)])
    config, problems = _read_config(folder)
    target = torch.device(device if device is not None else "cpu")
    with Shards(folder) as shards:
        problems += shards.problems
        if config is None or not shards.entries:
            raise HFConversionError(what, problems)
        try:
            family, head, tensors = _source(shards, config, registry, what, problems)
            dtype = dtype if dtype is not None else _dtype_of(config, shards)
            model = _fill(tensors, family, head, config, what, problems,
                          dtype=dtype, device=target, registry=registry)  # fmt: skip
        except OSError as exc:  # a file changed while it was read
            raise HFConversionError(what, [Problem(str(folder), _first_line(exc))]) from None
    _real_buffers(model, target, dtype, registry)
    model.eval()
    carried = {k: getattr(config, k) for k in CARRIED if getattr(config, k, None) is not None}
    model.hf_origin = HFOrigin(family.name, head.hf_class, carried)
    tokenizer = folder / TOKENIZER
    model.tokenizer_path = str(tokenizer) if tokenizer.is_file() else None
    return model
