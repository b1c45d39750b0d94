"""Mixture-of-Experts feed-forward layer: a router picks k expert ffns per token.

References: Shazeer et al. 2017 (sparsely-gated MoE); Fedus et al. 2021, Switch
Transformer (capacity, load-balancing loss eq. 4-6, router jitter); Zoph et al. 2022,
ST-MoE (router z-loss eq. 5); Jiang et al. 2024, Mixtral (softmax over the top-k);
Dai et al. 2024, DeepSeekMoE and Qwen2-MoE (always-on shared experts).

Shapes: B batch, T time, C d_model, N = B·T tokens, E experts, K top_k,
M kept (token, expert) assignments (M = N·K without a capacity).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from txblocks.nn.block import split_aux

__all__ = [
    "MoE",
    "Routing",
    "RoutingStats",
    "dispatch",
    "expert_capacity",
    "load_balancing_loss",
    "route",
    "router_z_loss",
]


@dataclass
class Routing:
    """Which experts each token goes to, and with what weight.

    Attributes:
        logits: (N, E) router logits, float32.
        probs: (N, E) softmax of the logits over all experts.
        experts: (N, K) the chosen experts, most probable first.
        weights: (N, K) the weights combining their outputs.
    """

    logits: Tensor
    probs: Tensor
    experts: Tensor
    weights: Tensor


@dataclass
class RoutingStats:
    """Counts of the last forward (detached), for logging.

    Attributes:
        routed: (E,) assignments each expert received from the router (before capacity).
        kept: (E,) assignments each expert processed (after capacity; equal to ``routed``
            without one).
        capacity: the per-expert capacity (per sequence with ``capacity_per="sequence"``),
            or None.
    """

    routed: Tensor
    kept: Tensor
    capacity: int | None

    @property
    def dropped(self) -> int:
        """Assignments dropped by the capacity limit."""
        return int((self.routed - self.kept).sum())


def route(logits: Tensor, top_k: int, *, normalize: bool) -> Routing:
    """Softmax over all experts, then the top ``top_k``.

    Args:
        logits: (N, E) router logits (any float dtype; the softmax runs in float32).
        top_k: experts per token.
        normalize: renormalise the k chosen probabilities to sum to 1 (Mixtral; equal to a
            softmax over the top-k logits). Without it the weights are the plain softmax
            probabilities (Switch, Qwen2-MoE ``norm_topk_prob=False``).
    """
    logits = logits.float()
    probs = logits.softmax(dim=-1)
    weights, experts = probs.topk(top_k, dim=-1)  # (N, K) each
    if normalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return Routing(logits, probs, experts, weights)


def load_balancing_loss(probs: Tensor, experts: Tensor, token_mask: Tensor | None = None) -> Tensor:
    """Switch Transformer load-balancing loss (Fedus et al. 2021, eq. 4-6), unscaled.

    ``E · Σ_e f_e · P_e`` where ``f_e`` is the number of top-k assignments to expert e
    divided by the number of tokens (so ``Σ_e f_e = K``) and ``P_e`` the mean router
    probability of e. This is Hugging Face's ``load_balancing_loss_func`` (Mixtral,
    Qwen2-MoE) for one layer: perfectly balanced routing gives K (1 for top-1).

    Args:
        probs: (N, E) router probabilities.
        experts: (N, K) chosen experts (before any capacity drop).
        token_mask: (N,) bool, True for real tokens; padding is left out of both means.
    """
    n_experts = probs.shape[-1]
    counts = F.one_hot(experts, n_experts).to(probs.dtype).sum(dim=1)  # (N, E)
    if token_mask is not None:
        keep = token_mask.to(probs.dtype)[:, None]
        total = keep.sum().clamp_min(1)
        f, p = (counts * keep).sum(0) / total, (probs * keep).sum(0) / total
    else:
        f, p = counts.mean(0), probs.mean(0)
    return n_experts * (f * p).sum()


def router_z_loss(logits: Tensor, token_mask: Tensor | None = None) -> Tensor:
    """ST-MoE router z-loss (Zoph et al. 2022, eq. 5), unscaled: mean over tokens of
    ``logsumexp(logits)²``; ``token_mask`` (N,) leaves padding out of the mean."""
    z = torch.logsumexp(logits.float(), dim=-1) ** 2  # (N,)
    if token_mask is None:
        return z.mean()
    keep = token_mask.to(z.dtype)
    return (z * keep).sum() / keep.sum().clamp_min(1)


def expert_capacity(capacity_factor: float, tokens: int, top_k: int, experts: int) -> int:
    """Switch capacity: ``ceil(capacity_factor · tokens · top_k / experts)``."""
    return math.ceil(capacity_factor * tokens * top_k / experts)


def dispatch(routing: Routing, n_experts: int, capacity: int | None = None,
             groups: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Sort the (token, expert) assignments by expert and apply the capacity.

    Within an expert, assignments keep the order "all first choices, then all second
    choices, ...", each in token order; with a capacity, each expert keeps the first
    ``capacity`` of them (GShard / Switch priority) and drops the rest. With ``groups``,
    the capacity counts within each group (a sequence, as Hugging Face's Switch
    Transformers does) instead of over all tokens.

    Args:
        routing: the routing of N tokens.
        n_experts: E.
        capacity: assignments each expert keeps per group, or None for all.
        groups: (N,) the group (0 .. G-1) of each token, or None for one group.

    Returns:
        tokens: (M,) token index of each kept assignment, grouped by expert.
        weights: (M,) its combine weight.
        routed: (E,) assignments per expert before the capacity.
        kept: (E,) assignments per expert after it (the sizes of the groups).
    """
    n, k = routing.experts.shape
    expert = routing.experts.t().reshape(-1)  # (K·N,) rank-major: all 1st choices first
    token = torch.arange(n, device=expert.device).repeat(k)
    weight = routing.weights.t().reshape(-1)
    routed = torch.bincount(expert, minlength=n_experts)
    if capacity is not None:
        key = expert if groups is None else groups[token] * n_experts + expert  # (K·N,)
        order = torch.argsort(key, stable=True)  # rank-major order kept within each key
        counts = torch.bincount(key)
        starts = torch.cumsum(counts, 0) - counts  # where each key's run begins
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel(), device=expert.device) - starts[key[order]]
        keep = rank < capacity
        expert, token, weight = expert[keep], token[keep], weight[keep]
    order = torch.argsort(expert, stable=True)
    kept = torch.bincount(expert, minlength=n_experts) if capacity is not None else routed
    return token[order], weight[order], routed, kept


class MoE(nn.Module):
    """A sparse Mixture-of-Experts ffn: ``Σ_{e ∈ topk(x)} w_e(x) · expert_e(x)``, plus
    optional always-on shared experts, ``[σ(shared_gate(x)) ·] shared(x)``.

    Each token goes to its ``top_k`` experts by router probability (see :func:`route`);
    tokens are sorted by expert, each expert runs once on its contiguous chunk, and the
    weighted outputs are added back (``index_add_``). With ``capacity_factor``, each
    expert processes at most :func:`expert_capacity` assignments per forward, with
    ``capacity`` at most that many; ``capacity_per="sequence"`` counts them per batch row
    (over its T tokens) instead of over all B·T tokens, as Hugging Face's Switch
    Transformers does. A dropped assignment contributes 0 (the token keeps its residual
    and any other experts).

    The forward returns ``(out, aux_loss)``: ``aux_loss_coef`` · :func:`load_balancing_loss`
    + ``z_loss_coef`` · :func:`router_z_loss` (+ the aux losses of experts that report one),
    a float32 scalar, in eval mode too. Inside a model the ffn does not see the attention
    mask, so padding tokens count in these losses; call ``forward(x, token_mask)`` directly
    to leave them out.

    Args:
        router: ``nn.Linear(C, E)``: the logits.
        experts: E ffn modules ``(B, T, C) -> (B, T, C)`` (or ``(out, aux_loss)``).
        top_k: experts per token (1 <= top_k <= E).
        normalize_top_k: renormalise the k weights to sum to 1 (Mixtral) or not (Switch,
            Qwen2-MoE). With ``top_k=1`` renormalising makes every weight 1, so the router
            then learns from the auxiliary losses only.
        capacity_factor: Switch capacity factor, or None.
        capacity: a fixed number of assignments per expert (Hugging Face's
            ``expert_capacity``), or None. At most one of the two.
        capacity_per: ``batch`` (the capacity counts over all tokens of a forward) or
            ``sequence`` (over each batch row; the rows are then independent).
        shared: an ffn every token goes through (DeepSeekMoE / Qwen2-MoE), or None.
        shared_gate: ``nn.Linear(C, 1)`` gating ``shared`` by a sigmoid (Qwen2-MoE), or None.
        aux_loss_coef: weight of the load-balancing loss.
        z_loss_coef: weight of the router z-loss.
        jitter: in training, the router input is multiplied by noise uniform in
            ``[1 - jitter, 1 + jitter]`` (Switch); the experts see the clean input.

    Attributes:
        last_stats: :class:`RoutingStats` of the last forward, or None before the first.
    """

    def __init__(self, router: nn.Linear, experts: list[nn.Module], *, top_k: int,
                 normalize_top_k: bool = True, capacity_factor: float | None = None,
                 capacity: int | None = None, capacity_per: str = "batch",
                 shared: nn.Module | None = None, shared_gate: nn.Linear | None = None,
                 aux_loss_coef: float = 0.01, z_loss_coef: float = 0.0,
                 jitter: float = 0.0) -> None:
        super().__init__()
        if not 1 <= top_k <= len(experts):
            raise ValueError(f"top_k {top_k} must be between 1 and the {len(experts)} experts")
        if router.out_features != len(experts):
            raise ValueError(f"router has {router.out_features} outputs for {len(experts)} experts")
        if shared_gate is not None and shared is None:
            raise ValueError("shared_gate needs a shared expert")
        if capacity_factor is not None and capacity is not None:
            raise ValueError("give capacity_factor or capacity, not both")
        if capacity is not None and capacity < 1:
            raise ValueError(f"capacity {capacity} must be at least 1")
        if capacity_per not in ("batch", "sequence"):
            raise ValueError(f"capacity_per {capacity_per!r}; allowed: batch, sequence")
        self.router = router
        self.experts = nn.ModuleList(experts)
        self.shared = shared
        self.shared_gate = shared_gate
        self.top_k, self.normalize_top_k = top_k, normalize_top_k
        self.capacity_factor, self.capacity, self.capacity_per = (
            capacity_factor, capacity, capacity_per)  # fmt: skip
        #: With a capacity over the batch, whether a token is dropped depends on the other rows.
        limited = capacity_factor is not None or capacity is not None
        self.batch_independent = not limited or capacity_per == "sequence"
        self.aux_loss_coef, self.z_loss_coef, self.jitter = aux_loss_coef, z_loss_coef, jitter
        self.last_stats: RoutingStats | None = None

    @property
    def n_experts(self) -> int:
        return len(self.experts)

    def forward(self, x: Tensor, token_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(B, T, C) -> ((B, T, C), aux_loss); ``token_mask`` (B, T) bool, True = real token."""
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # (N, C)
        mask = token_mask.reshape(-1).bool() if token_mask is not None else None
        router_in = flat
        if self.training and self.jitter > 0:
            router_in = flat * torch.empty_like(flat).uniform_(1 - self.jitter, 1 + self.jitter)
        routing = route(self.router(router_in), self.top_k, normalize=self.normalize_top_k)

        per_sequence = self.capacity_per == "sequence" and x.dim() == 3
        capacity, groups = self.capacity, None
        if self.capacity_factor is not None:
            n_tokens = shape[1] if per_sequence else flat.shape[0]
            capacity = expert_capacity(self.capacity_factor, n_tokens, self.top_k, self.n_experts)
        if capacity is not None and per_sequence:
            rows = torch.arange(shape[0], device=flat.device)
            groups = rows.repeat_interleave(shape[1])  # (N,) the batch row of each token
        tokens, weights, routed, kept = dispatch(routing, self.n_experts, capacity, groups)
        self.last_stats = RoutingStats(routed.detach(), kept.detach(), capacity)

        aux = routing.logits.new_zeros(())
        if self.aux_loss_coef:
            balance = load_balancing_loss(routing.probs, routing.experts, mask)
            aux = aux + self.aux_loss_coef * balance
        if self.z_loss_coef:
            aux = aux + self.z_loss_coef * router_z_loss(routing.logits, mask)

        out = torch.zeros_like(flat)
        sizes = kept.tolist()  # one host sync
        groups = zip(self.experts, flat.index_select(0, tokens).split(sizes),
                     tokens.split(sizes), weights.split(sizes), strict=True)
        for expert, chunk, idx, w in groups:  # chunk (n_e, C): the tokens of one expert
            if idx.numel() == 0:
                continue
            y, expert_aux = split_aux(expert(chunk[None]))  # (1, n, C): experts take (B, T, C)
            if expert_aux is not None:
                aux = aux + expert_aux.float()
            out.index_add_(0, idx, (y[0] * w[:, None]).to(out.dtype))

        if self.shared is not None:
            y, shared_aux = split_aux(self.shared(flat[None]))
            y = y[0]
            if shared_aux is not None:
                aux = aux + shared_aux.float()
            if self.shared_gate is not None:
                y = torch.sigmoid(self.shared_gate(flat)) * y
            out = out + y
        return out.reshape(shape), aux

    def extra_repr(self) -> str:
        capacity = f", capacity_factor={self.capacity_factor}" if self.capacity_factor else ""
        capacity += f", capacity={self.capacity}" if self.capacity is not None else ""
        if capacity and self.capacity_per != "batch":
            capacity += f", capacity_per={self.capacity_per}"
        return (f"experts={self.n_experts}, top_k={self.top_k}, "
                f"normalize_top_k={self.normalize_top_k}{capacity}")
