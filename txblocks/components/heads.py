"""Built-in heads: ``lm``, ``mlm``, ``classifier``, ``token_classifier``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn

from txblocks.nn.dims import ModelDims
from txblocks.nn.heads import ClassifierHead, LMHead, MLMHead, TokenClassifierHead
from txblocks.registry import ComponentConfig, Registry, slot
from txblocks.spec.slots import Slot


class LMHeadConfig(ComponentConfig):
    """Language-model head: hidden states to vocabulary logits."""

    tie_embeddings: bool = Field(True, description="Share the token embedding matrix.")
    bias: bool = False
    scale: float | Literal["rsqrt_d_model"] | None = Field(
        None, description="Multiply hidden states first; T5 uses rsqrt_d_model with tied embeddings."
    )
    final_softcap: float | None = Field(
        None, gt=0, description="Soft-cap the logits: c·tanh(logits / c) (Gemma 2: 30)."
    )


class MLMHeadConfig(ComponentConfig):
    """BERT's masked-LM head: dense, activation, norm, then tied vocabulary projection."""

    activation: ComponentConfig = slot("activation", "gelu")
    norm: ComponentConfig = slot("norm", "layernorm")
    tie_embeddings: bool = True
    bias: bool = True


class ClassifierConfig(ComponentConfig):
    """Sequence classifier over a pooled hidden state."""

    n_classes: int = Field(..., gt=0)
    pooling: Literal["cls", "mean", "last"] = "cls"
    pooler: bool = Field(False, description="BERT's dense + tanh pooler before the classifier.")
    dropout: float = Field(0.0, ge=0, lt=1)
    norm: Slot["norm"] | None = Field(
        None, description="A norm on the pooled state (BEiT: LayerNorm of the patches' mean)."
    )


class TokenClassifierConfig(ComponentConfig):
    """Per-token classifier (tagging, NER)."""

    n_classes: int = Field(..., gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)


def lm(dims: ModelDims, embedding: nn.Embedding, config: LMHeadConfig) -> LMHead:
    """Vocabulary logits, optionally tied to the token embeddings (and soft-capped).

    ``dims.d_model`` is the width of the hidden states the head reads (the token table's,
    with ``embedding.project_out``).
    """
    tied = embedding if config.tie_embeddings else None
    scale = dims.d_model**-0.5 if config.scale == "rsqrt_d_model" else config.scale
    return LMHead(dims.d_model, dims.vocab_size, bias=config.bias, tied=tied, scale=scale,
                  final_softcap=config.final_softcap)


def mlm(dims: ModelDims, embedding: nn.Embedding, config: MLMHeadConfig) -> MLMHead:
    """BERT's masked-LM head; its dense layer maps to the token table's width (ALBERT,
    ELECTRA: ``embedding.width``), which the norm and the projection read."""
    width = embedding.embedding_dim if embedding is not None else dims.d_model
    return MLMHead(
        dims.d_model,
        dims.vocab_size,
        config.activation.build(),
        config.norm.build(width),
        bias=config.bias,
        tied=embedding if config.tie_embeddings else None,
        width=width,
    )


def classifier(dims: ModelDims, embedding: nn.Embedding, config: ClassifierConfig) -> ClassifierHead:
    """Sequence classification logits (B, n_classes)."""
    return ClassifierHead(
        dims.d_model, config.n_classes, pooling=config.pooling, pooler=config.pooler,
        dropout=config.dropout, norm=config.norm.build(dims.d_model) if config.norm else None,
    )


def token_classifier(
    dims: ModelDims, embedding: nn.Embedding, config: TokenClassifierConfig
) -> TokenClassifierHead:
    """Token classification logits (B, T, n_classes)."""
    return TokenClassifierHead(dims.d_model, config.n_classes, dropout=config.dropout)


def register(registry: Registry) -> None:
    """Register the built-in heads."""
    registry.add("head", "lm", lm, LMHeadConfig)
    registry.add("head", "mlm", mlm, MLMHeadConfig)
    registry.add("head", "classifier", classifier, ClassifierConfig)
    registry.add("head", "token_classifier", token_classifier, TokenClassifierConfig)
