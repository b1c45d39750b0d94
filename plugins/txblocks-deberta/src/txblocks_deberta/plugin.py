"""The txblocks plugin: positional scheme ``disentangled`` and the ``deberta_v2`` HF family.

Registered through the ``txblocks`` entry point of the ``txblocks-deberta`` distribution.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, model_validator

import txblocks
from txblocks.nn.dims import ModelDims
from txblocks.nn.model import TransformerStack
from txblocks_deberta.buckets import bucket_problem
from txblocks_deberta.disentangled import TERMS, DisentangledPositions, Term
from txblocks_deberta.hf_family import DEBERTA_V2

__all__ = ["DisentangledConfig", "disentangled", "txblocks_after_build", "txblocks_register"]


class DisentangledConfig(txblocks.ComponentConfig):
    """DeBERTa-v2's disentangled attention (He et al. 2021): content-to-position and
    position-to-content score terms from shared, log-bucketed relative embeddings. DeBERTa
    scales every score by (head_dim · (1 + number of terms)) ** -0.5: set
    block.attention.scale to that."""

    position_buckets: int = Field(
        256, ge=0, description="Log buckets of relative positions (HF position_buckets); "
        "0: exact relative positions up to max_relative_positions.",
    )
    max_relative_positions: int = Field(
        512, ge=1, description="Distance reached by the last log bucket; without buckets, the "
        "span of relative positions (HF max_relative_positions, or max_position_embeddings).",
    )
    terms: list[Term] = Field(
        default_factory=lambda: list(TERMS), min_length=1, max_length=2,
        description="Score terms: c2p (content-to-position), p2c (position-to-content) "
        "(HF pos_att_type).",
    )
    norm_eps: float | None = Field(
        None, gt=0, description="LayerNorm of the relative embeddings with this epsilon "
        "(HF norm_rel_ebd: layer_norm, eps layer_norm_eps); null: no norm.",
    )
    share_att_key: bool = Field(
        True, description="Project the relative embeddings with each layer's own query and key "
        "projections (DeBERTa-v2/v3); false: separate per-layer pos_query_proj / pos_key_proj.",
    )
    dropout: float = Field(
        0.0, ge=0, lt=1, description="Dropout on the relative embeddings (HF: hidden_dropout_prob)."
    )

    @model_validator(mode="after")
    def _buckets(self) -> DisentangledConfig:
        if len(set(self.terms)) != len(self.terms):
            raise ValueError(f"terms: each term at most once, got {self.terms}")
        problem = bucket_problem(self.position_buckets, self.max_relative_positions)
        if problem:
            raise ValueError(problem)
        return self


def disentangled(dims: ModelDims, config: DisentangledConfig) -> DisentangledPositions:
    """DeBERTa-v2's disentangled relative attention, one table for the stack (and, without
    ``share_att_key``, position projections for each of ``dims.n_layers`` layers)."""
    return DisentangledPositions(
        dims.d_model, dims.n_heads, dims.n_kv_heads, dims.head_dim,
        position_buckets=config.position_buckets,
        max_relative_positions=config.max_relative_positions,
        terms=config.terms, norm_eps=config.norm_eps, share_att_key=config.share_att_key,
        n_layers=dims.n_layers, dropout=config.dropout,
    )  # fmt: skip


@txblocks.hookimpl
def txblocks_after_build(model: torch.nn.Module, spec: Any) -> None:
    """Refuse, right after the build, a ``disentangled`` scheme narrower than its layers (an
    ``embedding.width`` with ``project_at: end`` builds it as wide as the embedding sum),
    which the first forward would otherwise be the first to find."""
    for stack in model.modules():
        scheme = getattr(stack, "position", None)
        if not isinstance(stack, TransformerStack) or not isinstance(scheme, DisentangledPositions):
            continue
        for i, block in enumerate(stack.blocks):
            problem = scheme.width_problem(block.attention, i)
            if problem:
                raise txblocks.BuildError(f"{spec.name or 'model'}: {problem}")


@txblocks.hookimpl
def txblocks_register(registry: txblocks.Registry) -> None:
    """Register positional scheme ``disentangled`` and HF family ``deberta_v2``."""
    registry.add("position", "disentangled", disentangled, DisentangledConfig)
    registry.add("hf_family", "deberta_v2", DEBERTA_V2,
                 description="DeBERTa-v2 / v3 (model_type deberta-v2) <-> an encoder with "
                 "disentangled attention")
