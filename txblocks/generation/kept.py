"""A decoder's static cache, decoding state and CUDA graph, kept for its next generation.

A CUDA graph records the addresses of the tensors it reads and writes: the static cache and
the decoding state of the generation that captured it. So that a later generation of the
same (backend, batch, cache length, device, dtype, sampling settings) does not capture
again, the model keeps its last graphed generation's cache, state and graph; the next one
refills those tensors in place (the cache zeroed first, so it holds exactly what a new one
would) and replays the same graph. One generation per model is kept (its cache's memory
stays allocated until a generation of other shapes replaces it or the model is freed), and
a kept one in use (an unfinished stream) is not shared. Seq2seq models capture per
generation.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from txblocks.generation.static_sampling import DecodeState
from txblocks.nn.cache import StaticKVCache

__all__ = ["Kept", "clear", "keep", "kept_for", "refill"]


@dataclass
class Kept:
    """What a graphed generation leaves for the next one of the same ``key``."""

    key: tuple[Any, ...]
    cache: StaticKVCache
    state: DecodeState
    step: Callable[..., None]
    busy: bool = True  # a generation is using it


_kept: weakref.WeakKeyDictionary[Any, Kept] = weakref.WeakKeyDictionary()


def kept_for(model: Any, key: tuple[Any, ...] | None) -> Kept | None:
    """The kept generation of ``model`` for ``key``, marked busy; None if there is none,
    it has other shapes, or another generation is using it."""
    kept = _kept.get(model) if key is not None else None
    if kept is None or kept.key != key or kept.busy:
        return None
    kept.busy = True
    return kept


def keep(model: Any, kept: Kept) -> None:
    """Keep ``kept`` (busy until its generation ends) as ``model``'s, replacing any other."""
    _kept[model] = kept


def clear(cache: StaticKVCache) -> None:
    """Zero a kept cache's keys and values, as a new cache's are."""
    for layer in cache.layers:
        layer.k.zero_()
        layer.v.zero_()


def refill(kept: DecodeState, new: DecodeState) -> None:
    """Copy a new generation's starting state into the kept state's tensors (the same
    fields are set in both: the sampling settings are part of the key)."""
    for field in dataclasses.fields(DecodeState):
        target, source = getattr(kept, field.name), getattr(new, field.name)
        if isinstance(target, torch.Tensor) and target is not source:
            target.copy_(source)
