"""A Hugging Face folder's weights as the HF side of the weight engine, read lazily.

The names a family's rules use are those of a ``transformers`` model in memory; a folder
holds them as ``save_pretrained`` wrote them. :class:`FolderTensors` bridges the two the
way ``transformers``' ``from_pretrained`` does, without building the model:

* names on disk that ``transformers`` renames or merges when loading (Mixtral's
  per-expert ``block_sparse_moe.experts.{e}.w1`` become ``mlp.experts.gate_up_proj``; the
  legacy ``LayerNorm.gamma``) go through ``transformers``' own conversion mapping;
* tied weights saved once (``lm_head.weight`` tied to the embeddings) are found under
  every name of the tie, which comes from the class attribute ``_tied_weights_keys`` (and
  the base model's, under ``base_model_prefix``) when ``config.tie_word_embeddings``; as in
  ``from_pretrained``, two names of a tie both present with different values are untied;
* a checkpoint of the base model read for a class with a head (or the opposite) has its
  names found with or without ``base_model_prefix``;
* tensors that the class ignores on load (``_keys_to_ignore_on_load_unexpected``) are not
  required to be read.

Tensors are read on demand (:meth:`FolderTensors.read`); the last two are kept, so that
the slices of a stacked tensor (``select`` rules) read it once.
"""

from __future__ import annotations

import copy
import functools
import re
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from txblocks.errors import Problem
from txblocks.hf.family import HFConversionError
from txblocks.hf.shards import Shards

__all__ = ["FolderTensors", "hf_class_of"]

_PLAIN = re.compile(r"^[A-Za-z0-9_.]+$")


def hf_class_of(name: str) -> type:
    """The ``transformers`` class ``name`` (imported, never instantiated)."""
    import transformers

    return getattr(transformers, name)


class _Converted:
    """A model tensor that ``transformers`` makes from several tensors on disk."""

    def __init__(self, converter: Any, target: str) -> None:
        self.converter = converter
        self.target = target
        self.sources: dict[str, list[str]] = {}  # source pattern -> names on disk, in order

    def run(self, read: Callable[[str], Tensor], config: Any) -> dict[str, Tensor]:
        """The tensors made, each source read with ``read``."""
        converter = copy.deepcopy(self.converter)
        for pattern, names in self.sources.items():
            for name in names:
                converter.add_tensor(self.target, name, pattern, functools.partial(read, name))
        return dict(converter.convert(self.target, config=config))


def _layout(
    names: Sequence[str], classes: Sequence[str], model_type: str
) -> dict[str, str | _Converted]:
    """Model name -> name on disk, or the conversion that makes it (``transformers``' own
    mapping for the class or model type, and its legacy renamings)."""
    try:
        from transformers.conversion_mapping import get_checkpoint_conversion_mapping
        from transformers.core_model_loading import (
            WeightConverter, WeightRenaming, dot_natural_key, rename_source_key,
        )  # fmt: skip
    except ImportError:  # a transformers without conversion mappings loads names as they are
        return {n: n for n in names}
    transforms = next(
        (m for m in map(get_checkpoint_conversion_mapping, [*classes, model_type]) if m), []
    )
    transforms = [*transforms, *(get_checkpoint_conversion_mapping("legacy") or [])]
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    by_pattern = {p: c for c in converters for p in c.source_patterns}
    layout: dict[str, str | _Converted] = {}
    for name in sorted(names, key=dot_natural_key):
        target, pattern = rename_source_key(name, renamings, converters)
        if pattern is None:
            layout.setdefault(target, name)
            continue
        entry = layout.setdefault(target, _Converted(by_pattern[pattern], target))
        if isinstance(entry, _Converted):
            entry.sources.setdefault(pattern, []).append(name)
    return layout


def _tie_pairs(cls: type, base: type | None, prefix: str, config: Any) -> list[tuple[str, str]]:
    """(target, source) of each tie the class declares, as ``transformers`` expands it for
    plain names: none unless ``config.tie_word_embeddings``."""
    if not getattr(config, "tie_word_embeddings", False):
        return []
    pairs = dict(getattr(cls, "_tied_weights_keys", None) or {})
    if base is not None and base is not cls and prefix:
        inner = getattr(base, "_tied_weights_keys", None) or {}
        pairs.update({f"{prefix}{k}": f"{prefix}{v}" for k, v in inner.items()})
    return [(t, s) for t, s in pairs.items() if _PLAIN.match(t) and _PLAIN.match(s)]


def _ignored_on_load(classes: Sequence[type]) -> list[re.Pattern[str]]:
    patterns = set()
    for cls in classes:
        patterns.update(getattr(cls, "_keys_to_ignore_on_load_unexpected", None) or ())
    return [re.compile(p) for p in sorted(patterns)]


class FolderTensors:
    """The tensors of a folder (:class:`~txblocks.hf.shards.Shards`) under the names of the
    ``transformers`` model ``cls`` would load them into (see the module docstring).

    Args:
        shards: the folder's weights.
        config: its ``transformers`` config.
        cls: the model class (``LlamaForCausalLM``); read, never instantiated.
        base: the family's base model class (for its ties), or None.
        init_kwargs: the arguments :attr:`skeleton` builds ``cls`` with.
        dry: read ``meta`` tensors of the right shapes instead of data (checks only).
    """

    def __init__(
        self,
        shards: Shards,
        config: Any,
        cls: type,
        base: type | None = None,
        *,
        init_kwargs: dict[str, Any] | None = None,
        dry: bool = False,
    ) -> None:
        self._shards, self._config, self._cls, self.dry = shards, config, cls, dry
        self._init_kwargs = dict(init_kwargs or {})
        classes = [cls.__name__] + ([base.__name__] if base is not None else [])
        self._layout = _layout(list(shards), classes, getattr(config, "model_type", ""))
        head_prefix = getattr(cls, "base_model_prefix", "") or ""
        # the class holds its base model under base_model_prefix when the checkpoint does
        uses = head_prefix and any(n.startswith(f"{head_prefix}.") for n in self._layout)
        self.prefix = f"{head_prefix}." if uses else ""
        self._cache: OrderedDict[str, Tensor] = OrderedDict()
        self._alias: dict[str, str] = {}  # a name of a tie -> the name present on disk
        self._untied: list[str] = []
        for target, source in _tie_pairs(cls, base, self.prefix, config):
            self._tie(target, source)
        self._cache.clear()
        self._ignored = _ignored_on_load([cls, *([base] if base is not None else [])])

    # -- ties ---------------------------------------------------------------------------
    def _present(self, name: str) -> str | None:
        name = self._alias.get(name, name)
        return name if name in self._layout else None

    def _tie(self, target: str, source: str) -> None:
        t, s = self._present(target), self._present(source)
        if t is not None and s is not None:
            if t != s and not self._equal(t, s):
                self._untied.append(target)  # as from_pretrained: different values, no tie
            elif t != s:
                self._alias[target] = s
        elif s is not None:
            self._alias[target] = s
        elif t is not None:
            self._alias[source] = t

    def _equal(self, a: str, b: str) -> bool:
        return self._shape(a) == self._shape(b) and torch.equal(self._load(a), self._load(b))

    # -- the HFTensors protocol ----------------------------------------------------------
    def _resolve(self, name: str) -> str | None:
        found = self._present(name)
        if found is not None or not self.prefix.strip("."):
            return found
        # a base-model checkpoint for a class with a head, or the opposite
        if name.startswith(self.prefix):
            return self._present(name.removeprefix(self.prefix))
        return self._present(self.prefix + name)

    def key(self, name: str) -> Hashable | None:
        return self._resolve(name)

    def shape(self, name: str) -> torch.Size:
        return self._shape(self._resolve(name) or name)

    def _shape(self, name: str) -> torch.Size:
        entry = self._layout[name]
        return self._shards.shape(entry) if isinstance(entry, str) else self._load(name, True).shape

    def _meta(self, name: str) -> Tensor:
        """An empty tensor of the dtype and shape of ``name`` on disk."""
        entry = self._shards.entries[name]
        return torch.empty(entry.shape, dtype=entry.dtype, device="meta")

    def _load(self, name: str, meta: bool = False) -> Tensor:
        """The tensor ``name`` (a present name), from the cache or the files (``meta``:
        its dtype and shape only)."""
        if name in self._cache:
            self._cache.move_to_end(name)
            return self._cache[name]
        entry = self._layout[name]
        if isinstance(entry, str):
            return self._meta(entry) if meta else self._cached(name, self._shards.read(entry))
        try:
            made = entry.run(self._meta if meta else self._shards.read, self._config)
        # tensors on disk that do not combine (experts of different shapes)
        except (RuntimeError, ValueError, IndexError, KeyError) as exc:
            sources = ", ".join(n for names in entry.sources.values() for n in names[:1])
            why = f"transformers' conversion of {sources}, ... fails: {exc}".splitlines()[0]
            raise HFConversionError(f"cannot read {name}", [Problem(name, why)]) from None
        if len(made) != 1:
            why = (f"transformers makes {len(made)} tensors of it ({', '.join(made)}); "
                   "txblocks reads conversions into one tensor only")  # fmt: skip
            raise HFConversionError(f"cannot read {name}", [Problem(name, why)])
        tensor = next(iter(made.values()))
        return tensor if meta else self._cached(name, tensor)

    def _cached(self, name: str, tensor: Tensor) -> Tensor:
        self._cache[name] = tensor
        while len(self._cache) > 2:
            self._cache.popitem(last=False)
        return tensor

    def read(self, name: str) -> Tensor:
        found = self._resolve(name)
        if found is None:
            raise KeyError(name)
        return self._load(found, meta=self.dry)

    def write(self, name: str, value: Tensor, index: int | None) -> None:
        raise TypeError("a folder is read, not written: use save_pretrained")

    def unique(self) -> dict[str, Hashable]:
        merged = set(self._alias)
        return {
            n: n for n in self._layout
            if n not in merged and not any(p.search(n) for p in self._ignored)
        }  # fmt: skip

    def forget(self) -> None:
        """Drop the tensors kept for the next reads."""
        self._cache.clear()

    # -- the model, for families whose spec reads ``view.model`` -------------------------
    def skeleton(self) -> nn.Module:
        """``cls`` built on the ``meta`` device (nothing allocated), its ties as loading this
        folder leaves them; built only for a family whose spec reads ``view.model``."""
        with torch.device("meta"):
            model = self._cls(self._config, **self._init_kwargs)
        for target in self._untied:
            owner, _, attr = target.rpartition(".")
            module = model.get_submodule(owner)
            old = getattr(module, attr)
            new = nn.Parameter(torch.empty_like(old), requires_grad=old.requires_grad)
            setattr(module, attr, new)
            getattr(model, "all_tied_weights_keys", {}).pop(target, None)
        return model
