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
