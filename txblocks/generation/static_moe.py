"""A Mixture-of-Experts ffn without data-dependent shapes, for compiled decoding steps.

:class:`~txblocks.nn.moe.MoE` sorts tokens by expert and runs each expert on its chunk, so
the chunk sizes (read back to the host) depend on the routing. Here every expert runs on
every token and each output is weighted by the token's routing weight, 0 for experts it
was not routed to: the same sum (adding exact zeros), with static shapes, at E / K times
the expert work. At a decoding step (B tokens) the step reads every expert's weights
instead of the K chosen ones; a gather of the chosen experts' weights would need the
experts stacked, which they are not (they are any ffn modules).

Shapes: B batch, T time, C d_model, N = B·T tokens, E experts, K top_k.
"""

from __future__ import annotations

import torch
from torch import Tensor

from txblocks.nn.block import split_aux
from txblocks.nn.moe import MoE, Routing, expert_capacity, route


def static_moe_problem(moe: MoE) -> str | None:
    """Why ``moe`` has no static path, or None: every built-in MoE has one (a capacity is
    applied by ranks computed with a cumulative sum, see :func:`kept_weights`)."""
    del moe
    return None


def _capacity(moe: MoE, shape: torch.Size) -> int | None:
    """The capacity ``moe.forward`` uses for an input of ``shape`` (B, T, C), or None: a
    Python int of static shapes."""
    if moe.capacity_factor is not None:
        per_sequence = moe.capacity_per == "sequence" and len(shape) == 3
        tokens = shape[1] if per_sequence else shape[:-1].numel()
        return expert_capacity(moe.capacity_factor, tokens, moe.top_k, moe.n_experts)
    return moe.capacity


def kept_weights(moe: MoE, routing: Routing, shape: torch.Size) -> Tensor:
    """(N, E) combine weights of the N tokens, 0 for experts not chosen and for assignments
    that the capacity drops: the drops of :func:`~txblocks.nn.moe.dispatch` (each expert keeps
    its first ``capacity`` assignments in the order "all first choices in token order, then all
    second choices, ...", per sequence with ``capacity_per="sequence"``), without its sort."""
    n, k = routing.experts.shape
    n_experts = moe.n_experts
    chosen = torch.nn.functional.one_hot(routing.experts.t(), n_experts)  # (K, N, E)
    weights = chosen * routing.weights.t()[..., None]  # (K, N, E)
    capacity = _capacity(moe, shape)
    if capacity is not None:
        per_sequence = moe.capacity_per == "sequence" and len(shape) == 3
        groups = (k, shape[0], shape[1]) if per_sequence else (k, 1, n)
        order = chosen.reshape(*groups, n_experts).transpose(0, 1)  # (G, K, n/G, E)
        rank = order.flatten(1, 2).cumsum(1) - 1  # (G, K·n/G, E): earlier assignments of e
        keep = (rank < capacity).reshape(order.shape).transpose(0, 1).reshape(k, n, n_experts)
        weights = weights * keep
    return weights.sum(0)  # (N, E): the K choices are distinct experts


def moe_all_experts(moe: MoE, x: Tensor) -> Tensor:
    """(B, T, C) -> (B, T, C): ``moe``'s output (inference: no auxiliary loss) with every
    expert run on every token."""
    shape = x.shape
    flat = x.reshape(-1, shape[-1])  # (N, C)
    routing = route(moe.router(flat), moe.top_k, normalize=moe.normalize_top_k)
    dense = kept_weights(moe, routing, shape)  # (N, E)
    out = torch.zeros_like(flat)
    for e, expert in enumerate(moe.experts):
        y = split_aux(expert(flat[None]))[0][0]  # (N, C): experts take (B, T, C)
        out = out + (y * dense[:, e:e + 1]).to(out.dtype)
    if moe.shared is not None:
        y = split_aux(moe.shared(flat[None]))[0][0]
        if moe.shared_gate is not None:
            y = torch.sigmoid(moe.shared_gate(flat)) * y
        out = out + y
    return out.reshape(shape)
