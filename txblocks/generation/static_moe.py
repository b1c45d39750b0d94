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
from txblocks.nn.moe import MoE, route


def static_moe_problem(moe: MoE) -> str | None:
    """Why ``moe`` has no static path (a capacity drops tokens by the batch's routing), or None."""
    if moe.capacity_factor is not None or moe.capacity is not None:
        return ("an MoE ffn with a capacity (capacity_factor / capacity): which tokens it "
                "drops depends on the routing of the whole batch")
    return None


def moe_all_experts(moe: MoE, x: Tensor) -> Tensor:
    """(B, T, C) -> (B, T, C): ``moe``'s output (inference: no auxiliary loss) with every
    expert run on every token."""
    shape = x.shape
    flat = x.reshape(-1, shape[-1])  # (N, C)
    routing = route(moe.router(flat), moe.top_k, normalize=moe.normalize_top_k)
    dense = torch.zeros_like(routing.probs).scatter(1, routing.experts, routing.weights)  # (N, E)
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
