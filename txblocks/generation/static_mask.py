"""The attention masks of a compiled decoding step, built from the slot tensor.

Shapes: B batch, H heads, L cache slots (the static cache length), W a rolling buffer's
slots, S encoder time.

At a decoding step the one query sits at slot ``q = cache.index`` and may see key slot
``j`` when ``j <= q`` (written already), the slot is not left padding, and, with a sliding
window w, ``j > q - w``. Every built-in mask strategy reduces to that at a decoding step:
the prompt (where they differ) was run by the eager prefill. A positional bias (ALiBi, T5
buckets) is the scheme's own ``attention_bias`` with the query offset given as a tensor,
in slot coordinates as in eager decoding (left padding shifts queries and keys alike).

A rolling buffer of W slots (a sliding-window layer, W = its ``cache_window``) holds at
buffer slot ``j`` the key of slot ``s_j = q - ((q - j) mod W)``: the latest slot congruent
to ``j`` that is ``<= q``, so always within the window. It is kept when ``s_j >= 0`` (written)
and ``s_j`` is not padding; its bias is the bias of slot ``s_j``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from txblocks.attention.mask import AttentionMask, FullMask
from txblocks.nn.cache import StaticKVCache
from txblocks.nn.model import TransformerStack


def step_additive(model: TransformerStack, cache: StaticKVCache, window: int | None, causal: bool,
                  dtype: torch.dtype, *, rolling: int | None = None,
                  layer: int | None = None) -> Tensor:
    """Additive mask (B, H|1, 1, L), or (B, H|1, 1, W) for a ``rolling`` buffer of W slots:
    the positional bias (or 0) where kept, ``finfo.min`` where masked, as
    :meth:`AttentionMask.additive` makes it. ``layer``: a per-layer bias table's layer."""
    device = cache.index.device
    slots = torch.arange(cache.capacity, device=device)  # (L,)
    query = cache.index  # (1,)
    extra = {"layer": layer} if layer is not None else {}
    bias = model.position.attention_bias(1, cache.capacity, query, causal,  # type: ignore[arg-type]
                                         device, dtype, **extra)  # (1, H, 1, L) or None
    if rolling is not None:
        held = query - (query - torch.arange(rolling, device=device)).remainder(rolling)  # (W,) s_j
        index = held.clamp_min(0)
        keep = cache.key_valid.index_select(1, index) & (held >= 0)  # (B, W)
        if bias is not None:
            bias = bias.index_select(-1, index)
    else:
        keep = cache.key_valid & (slots <= query)  # (B, L)
        if window is not None:
            keep = keep & (slots > query - window)
    if bias is None:
        bias = torch.zeros((), dtype=dtype, device=device)
    return torch.where(keep[:, None, None, :], bias, torch.finfo(dtype).min)


def step_masks(model: TransformerStack, cache: StaticKVCache, dtype: torch.dtype) -> list[AttentionMask]:
    """One ``FullMask(1, L or W, bias=additive)`` per block; blocks with the same window,
    causality and buffer share one (unless the bias has a table per layer)."""
    per_layer = bool(getattr(model.position, "per_layer", False))
    built: dict[tuple[int | None, bool, int | None, int | None], AttentionMask] = {}
    out = []
    for i, (strategy, layer) in enumerate(zip(model.masks, cache.layers, strict=True)):
        rolling = layer.capacity if layer.rolling else None
        key = (strategy.cache_window, strategy.causal, rolling, i if per_layer else None)
        if key not in built:
            additive = step_additive(model, cache, key[0], key[1], dtype, rolling=rolling,
                                     layer=key[3])
            built[key] = FullMask(1, additive.shape[-1], bias=additive)
        out.append(built[key])
    return out
