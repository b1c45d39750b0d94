"""The attention masks of a compiled decoding step, built from the slot tensor.

Shapes: B batch, H heads, L cache slots (the static cache length).

At a decoding step the one query sits at slot ``q = cache.index`` and may see key slot
``j`` when ``j <= q`` (written already), the slot is not left padding, and, with a sliding
window w, ``j > q - w``. Every built-in mask strategy reduces to that at a decoding step:
the prompt (where they differ) was run by the eager prefill. A positional bias (ALiBi, T5
buckets) is the scheme's own ``attention_bias`` with the query offset given as a tensor,
in slot coordinates as in eager decoding (left padding shifts queries and keys alike).
"""

from __future__ import annotations

import torch
from torch import Tensor

from txblocks.attention.mask import AttentionMask, FullMask
from txblocks.nn.cache import StaticKVCache
from txblocks.nn.model import TransformerStack


def step_additive(model: TransformerStack, cache: StaticKVCache, window: int | None, causal: bool,
                  dtype: torch.dtype) -> Tensor:
    """Additive mask (B, H|1, 1, L): the positional bias (or 0) where kept, ``finfo.min``
    where masked, as :meth:`AttentionMask.additive` makes it."""
    slots = torch.arange(cache.capacity, device=cache.index.device)  # (L,)
    query = cache.index  # (1,)
    keep = cache.key_valid & (slots <= query)  # (B, L)
    if window is not None:
        keep = keep & (slots > query - window)
    bias = model.position.attention_bias(1, cache.capacity, query, causal,  # type: ignore[arg-type]
                                         cache.index.device, dtype)  # (1, H, 1, L) or None
    if bias is None:
        bias = torch.zeros((), dtype=dtype, device=cache.index.device)
    return torch.where(keep[:, None, None, :], bias, torch.finfo(dtype).min)


def step_masks(model: TransformerStack, cache: StaticKVCache, dtype: torch.dtype) -> list[AttentionMask]:
    """One ``FullMask(1, L, bias=additive)`` per block; blocks with the same window and
    causality share one."""
    built: dict[tuple[int | None, bool], AttentionMask] = {}
    out = []
    for strategy in model.masks:
        key = (strategy.cache_window, strategy.causal)
        if key not in built:
            additive = step_additive(model, cache, *key, dtype)
            built[key] = FullMask(1, cache.capacity, bias=additive)
        out.append(built[key])
    return out
