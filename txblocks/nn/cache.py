"""Key/value caches for incremental decoding.

Shapes: B batch, L capacity, Hkv key/value heads, D head_dim, T new tokens, S encoder time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


class LayerCache:
    """Keys and values of one self-attention layer, preallocated (B, L, Hkv, D).

    With ``window`` set (sliding-window layers) the buffer holds only the ``window``
    most recent positions, so memory stays constant however long the generation:
    a step sees the buffer plus its new keys, then keeps the last ``window`` of them.
    Only key/value heads are stored, so grouped-query models cache Hkv, not H, heads.
    """

    def __init__(self, batch: int, capacity: int, n_kv_heads: int, head_dim: int, *,
                 dtype: torch.dtype, device: torch.device, window: int | None = None) -> None:
        sizes = {"batch": batch, "capacity": capacity, "n_kv_heads": n_kv_heads, "head_dim": head_dim}
        if window is not None:
            sizes["window"] = window
        for name, value in sizes.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"LayerCache: {name} must be a positive integer, got {value!r}")
        size = min(capacity, window) if window is not None else capacity
        self.k = torch.zeros(batch, size, n_kv_heads, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.window = window
        self.length = 0  # valid positions in the buffer

    @property
    def capacity(self) -> int:
        return self.k.shape[1]

    def span(self, position: int, new: int) -> tuple[int, int]:
        """(first absolute key position, number of keys) that a step of ``new`` tokens at
        ``position`` attends to."""
        held = min(position, self.capacity) if self.window is not None else position
        return position - held, held + new

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Add (B, T, Hkv, D) keys and values; return every key and value of this step."""
        new = k.shape[1]
        end = self.length + new
        if end <= self.capacity:
            self.k[:, self.length:end] = k
            self.v[:, self.length:end] = v
            self.length = end
            return self.k[:, :end], self.v[:, :end]
        if self.window is None:
            raise ValueError(
                f"the KV cache holds {self.capacity} positions and this step would need {end}; "
                "create it with a larger max_len"
            )
        keys = torch.cat([self.k[:, : self.length], k], dim=1)
        values = torch.cat([self.v[:, : self.length], v], dim=1)
        keep = min(self.capacity, keys.shape[1])
        self.k[:, :keep] = keys[:, -keep:]
        self.v[:, :keep] = values[:, -keep:]
        self.length = keep
        return keys, values

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows ``index`` (beam search)."""
        self.k = self.k.index_select(0, index)
        self.v = self.v.index_select(0, index)


@dataclass
class CrossCache:
    """Cross-attention keys and values of one decoder layer, computed once per encoder output."""

    k: Tensor | None = None
    v: Tensor | None = None

    def reorder(self, index: Tensor) -> None:
        if self.k is not None and self.v is not None:
            self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)


@dataclass
class KVCache:
    """Everything a decoder stack carries from one step to the next.

    Attributes:
        layers: one :class:`LayerCache` per block.
        cross: one :class:`CrossCache` per block (seq2seq decoders), else empty.
        position: tokens seen so far (the absolute position of the next token).
        padding: (B, position) bool, True for real tokens, when the caller passed masks.
        skip_input_checks: forwards with this cache skip the range checks of ids and
            positions (one host sync each). Generation sets it after checking the prompt:
            later steps feed the model tokens it chose itself.
    """

    layers: list[LayerCache]
    cross: list[CrossCache] = field(default_factory=list)
    position: int = 0
    padding: Tensor | None = None
    skip_input_checks: bool = False

    @property
    def batch(self) -> int:
        """Rows the cache was created for."""
        return self.layers[0].k.shape[0] if self.layers else 0

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows ``index`` in every layer (beam search)."""
        for layer in self.layers:
            layer.reorder(index)
        for cross in self.cross:
            cross.reorder(index)
        if self.padding is not None:
            self.padding = self.padding.index_select(0, index)


class StaticLayerCache(LayerCache):
    """Keys and values of one layer at a fixed length, written at a position tensor.

    For a compiled decoding step: the buffers never change shape, the slot written is the
    tensor ``index`` (1,) shared by every layer (and advanced in place by the step), and
    :meth:`append` returns the whole buffers, so a step attends over all of them and masks
    the ones not written yet (see ``txblocks.generation.static_mask``).

    With ``window`` W < L (a sliding-window layer) the buffer is *rolling*: W slots, the key
    of slot s stored at ``s % W``, so each slot holds the latest key of its residue class,
    which is all a query within the window can see. Otherwise the buffer has L slots.

    Not for :meth:`~txblocks.nn.model.TransformerStack.run`, which slices keys by
    ``length``: the compiled step drives the blocks itself.

    Args:
        batch, capacity, n_kv_heads, head_dim: B, L, Hkv, D.
        index: (1,) long, the slot of the next key.
        window: the layer's ``cache_window`` (keys a query may see, itself included), or None.
    """

    def __init__(self, batch: int, capacity: int, n_kv_heads: int, head_dim: int, *,
                 dtype: torch.dtype, device: torch.device, index: Tensor,
                 window: int | None = None) -> None:
        rolling = window is not None and window < capacity
        super().__init__(batch, capacity, n_kv_heads, head_dim, dtype=dtype, device=device,
                         window=window if rolling else None)
        self.index = index
        #: Whether the buffer is rolling (W < L slots, slot s at s % W).
        self.rolling = rolling

    def slot(self) -> Tensor:
        """(1,) long: where the key of slot ``index`` goes in the buffer."""
        return self.index.remainder(self.capacity) if self.rolling else self.index

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write (B, 1, Hkv, D) keys and values at slot ``index`` (rolling: ``index % W``);
        return the (B, L or W, Hkv, D) buffers. No host sync, no shape that depends on the
        slot."""
        slot = self.slot()
        self.k.index_copy_(1, slot, k)
        self.v.index_copy_(1, slot, v)
        return self.k, self.v

    def fill(self, layer: LayerCache, end: int) -> None:
        """Copy the keys and values of a prefill (``layer`` holds the positions up to
        ``end``; a rolling window buffer its last ``layer.length``) into slots ``..end``
        (rolling: the last W of them, slot s at ``s % W``)."""
        held = min(layer.length, self.capacity)
        slots = torch.arange(end - held, end, device=self.k.device)
        if self.rolling:
            slots = slots.remainder(self.capacity)
        first = layer.length - held
        self.k.index_copy_(1, slots, layer.k[:, first:layer.length].to(self.k.dtype))
        self.v.index_copy_(1, slots, layer.v[:, first:layer.length].to(self.v.dtype))
        self.length = end


@dataclass
class StaticKVCache:
    """The preallocated cache of a compiled decoding step (B rows, L slots per layer).

    Attributes:
        layers: one :class:`StaticLayerCache` per block, sharing ``index``.
        index: (1,) long, the slot of the next token (the prompt fills ``0 .. T-1``).
        key_valid: (B, L) bool, False on the prompt's left padding; slots after the prompt
            are True (the causal part of the mask hides those not written yet).
        cross: seq2seq decoders: one :class:`CrossCache` per cross-attending block, the
            encoder's keys and values (fixed for the whole generation); else empty.
        context: (B, S, C) the encoder output (seq2seq), or None.
        context_valid: (B, S) bool, False on the source's padding, or None (no padding).
    """

    layers: list[StaticLayerCache]
    index: Tensor
    key_valid: Tensor
    cross: list[CrossCache] = field(default_factory=list)
    context: Tensor | None = None
    context_valid: Tensor | None = None

    @property
    def batch(self) -> int:
        return self.key_valid.shape[0]

    @property
    def capacity(self) -> int:
        """L, the slots of the sequence (a rolling layer's buffer holds fewer)."""
        return self.key_valid.shape[1]

    @classmethod
    def empty(cls, shapes: list[tuple[int, int]], batch: int, capacity: int, *,
              dtype: torch.dtype, device: torch.device,
              windows: list[int | None] | None = None) -> StaticKVCache:
        """Zeroed buffers for layers of ``(n_kv_heads, head_dim)`` each; index 0, no padding.
        ``windows`` (one per layer, None for full attention) makes rolling buffers."""
        index = torch.zeros(1, dtype=torch.long, device=device)
        windows = windows if windows is not None else [None] * len(shapes)
        layers = [StaticLayerCache(batch, capacity, heads, dim, dtype=dtype, device=device,
                                   index=index, window=window)
                  for (heads, dim), window in zip(shapes, windows, strict=True)]
        key_valid = torch.ones(batch, capacity, dtype=torch.bool, device=device)
        return cls(layers, index, key_valid)

    def fill(self, prefill: KVCache, attention_mask: Tensor | None) -> None:
        """Take over a prefill's keys and values and padding: (B, T) ``attention_mask``, 0
        on padding (None: none); the next slot is T. Cross-attention keys and values (which
        the prefill computed) are taken as they are."""
        end = prefill.position
        for static, layer in zip(self.layers, prefill.layers, strict=True):
            static.fill(layer, end)
        self.cross = list(prefill.cross)
        self.key_valid.fill_(True)
        if attention_mask is not None:
            self.key_valid[:, :end] = attention_mask.bool()
        self.index.fill_(end)
