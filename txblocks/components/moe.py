"""Built-in Mixture-of-Experts ffn: ``moe``.

Spec example (Mixtral-style)::

    ffn: {type: moe, experts: 8, top_k: 2, expert: {type: glu, activation: silu, hidden: 1408}}
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator
from torch import nn

from txblocks.nn.moe import MoE
from txblocks.registry import ComponentConfig, Registry, slot
from txblocks.spec.limits import MAX_EXPERTS


class MoEConfig(ComponentConfig):
    """Mixture of Experts (Switch, Mixtral, Qwen2-MoE): each token goes to top_k expert ffns."""

    experts: int = Field(8, ge=1, json_schema_extra={"maximum": MAX_EXPERTS},
                         description=f"Number of routed experts E (at most {MAX_EXPERTS}).")
    top_k: int = Field(2, ge=1, description="Experts per token (at most `experts`).")
    expert: ComponentConfig = slot(
        "ffn", "mlp", description="The ffn of each expert (any ffn but moe); E copies are built."
    )
    normalize_top_k: bool = Field(
        True,
        description="Renormalise the k chosen router probabilities to sum to 1 (Mixtral); false "
        "keeps the plain softmax probabilities (Switch, Qwen2-MoE norm_topk_prob=false). With "
        "top_k 1, true makes every weight 1 and the router learns from the aux losses only.",
    )
    capacity_factor: float | None = Field(
        None,
        gt=0,
        description="Switch capacity: each expert processes at most ceil(factor · tokens · top_k "
        "/ experts) assignments per forward, first choices first, then in token order; the "
        "rest are dropped (0 from that expert). null: no limit.",
    )
    capacity: int | None = Field(
        None,
        ge=1,
        description="A fixed capacity instead of capacity_factor: each expert processes at most "
        "this many assignments (Hugging Face's Switch expert_capacity). null: none.",
    )
    capacity_per: Literal["batch", "sequence"] = Field(
        "batch",
        description="What a capacity counts over: batch (all tokens of a forward) or sequence "
        "(each batch row on its own, as Hugging Face's Switch Transformers; rows then do not "
        "compete, and tokens = the sequence length in capacity_factor's formula).",
    )
    shared_experts: int = Field(
        0,
        ge=0,
        description="Always-on shared experts (DeepSeekMoE, Qwen2-MoE), fused into one ffn.",
    )
    shared_hidden: int | None = Field(
        None,
        gt=0,
        description="Hidden width of the fused shared ffn; default shared_experts · "
        "expert.hidden.",
    )
    shared_gate: bool = Field(
        False, description="Scale the shared ffn by sigmoid(Linear(d_model, 1)(x)) (Qwen2-MoE)."
    )
    router_bias: bool = Field(False, description="Bias in the router's linear layer.")
    jitter: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Training only: multiply the router input by noise uniform in "
        "[1 - jitter, 1 + jitter] (Switch; experts see the clean input).",
    )
    aux_loss_coef: float = Field(
        0.01,
        ge=0,
        description="Weight of the load-balancing loss E · Σ_e f_e · P_e (Switch eq. 4; f_e = "
        "top-k assignments to e / tokens, as Hugging Face's load_balancing_loss_func).",
    )
    z_loss_coef: float = Field(
        0.0, ge=0, description="Weight of the router z-loss mean(logsumexp(logits)²) (ST-MoE)."
    )

    @field_validator("experts")
    @classmethod
    def _experts_bounded(cls, experts: int) -> int:
        if experts > MAX_EXPERTS:
            raise ValueError(f"{experts:,} experts; a moe has at most {MAX_EXPERTS:,} "
                             "(txblocks.spec.limits.MAX_EXPERTS): each expert is a module of its "
                             "own, and the most in use are 256 (DeepSeek-V3)")
        return experts

    @field_validator("top_k")
    @classmethod
    def _top_k_fits(cls, top_k: int, info: ValidationInfo) -> int:
        experts = info.data.get("experts")
        if experts is not None and top_k > experts:
            raise ValueError(f"top_k {top_k} is larger than experts {experts}; use 1..{experts}")
        return top_k

    @field_validator("expert")
    @classmethod
    def _not_nested(cls, expert: ComponentConfig) -> ComponentConfig:
        if isinstance(expert, MoEConfig):
            raise ValueError(
                "a moe cannot be the expert of a moe (nested Mixture of Experts is not "
                "supported); use a dense ffn such as mlp or glu"
            )
        return expert

    @model_validator(mode="after")
    def _shared_consistent(self) -> MoEConfig:
        if self.capacity is not None and self.capacity_factor is not None:
            raise ValueError("capacity and capacity_factor are two ways to set one limit; give "
                             "one of them")
        if self.shared_experts == 0 and (self.shared_gate or self.shared_hidden is not None):
            raise ValueError("shared_gate and shared_hidden need shared_experts >= 1")
        if self.shared_experts:
            has_hidden = "hidden" in type(self.expert).model_fields
            if self.shared_hidden is not None and not has_hidden:
                raise ValueError(
                    "shared_hidden: the expert ffn has no 'hidden' field to set; leave "
                    "shared_hidden out (the shared ffn is then a copy of the expert)"
                )
            if (self.shared_experts > 1 and self.shared_hidden is None
                    and getattr(self.expert, "hidden", None) is None):
                raise ValueError(
                    f"shared_experts {self.shared_experts} are fused into one ffn whose width "
                    "is shared_experts · expert.hidden: set expert.hidden or shared_hidden"
                )
        return self

    def shared_config(self) -> ComponentConfig | None:
        """The config of the fused shared ffn: the expert's, with the shared hidden width."""
        if not self.shared_experts:
            return None
        hidden = self.shared_hidden
        if hidden is None and getattr(self.expert, "hidden", None) is not None:
            hidden = self.shared_experts * self.expert.hidden  # type: ignore[attr-defined]
        if hidden is None:
            return self.expert
        return self.expert.model_copy(update={"hidden": hidden})


def moe(dim: int, config: MoEConfig) -> MoE:
    """A Mixture-of-Experts ffn of width ``dim``.

    Weights: ``router`` (Linear(dim, experts)), ``experts.{i}`` (each an ffn built from
    ``config.expert``), ``shared`` (the fused shared ffn, or None), ``shared_gate``
    (Linear(dim, 1, bias=False), or None).
    """
    experts = [config.expert.build(dim) for _ in range(config.experts)]
    shared_config = config.shared_config()
    shared = shared_config.build(dim) if shared_config is not None else None
    gate = nn.Linear(dim, 1, bias=False) if config.shared_gate else None
    return MoE(
        nn.Linear(dim, config.experts, bias=config.router_bias),
        experts,
        top_k=config.top_k,
        normalize_top_k=config.normalize_top_k,
        capacity_factor=config.capacity_factor,
        capacity=config.capacity,
        capacity_per=config.capacity_per,
        shared=shared,
        shared_gate=gate,
        aux_loss_coef=config.aux_loss_coef,
        z_loss_coef=config.z_loss_coef,
        jitter=config.jitter,
    )


def register(registry: Registry) -> None:
    """Register the Mixture-of-Experts ffn."""
    registry.add("ffn", "moe", moe, MoEConfig)
