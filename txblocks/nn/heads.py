"""Output heads. Shapes: B batch, T time, C d_model, V vocabulary, K classes."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

Pooling = Literal["cls", "mean", "last"]


class LMHead(nn.Module):
    """Projects hidden states to vocabulary logits; ``weight`` may be the embedding's.

    Args:
        dim, vocab_size: C and V.
        bias: a bias on the projection.
        tied: share this embedding's (V, C) table as the projection's weight.
        scale: multiply the hidden states first (T5: d_model ** -0.5).
        final_softcap: soft-cap the logits, ``c · tanh(logits / c)`` (Gemma 2: 30; Gemma
            Team 2024), or None.
    """

    def __init__(self, dim: int, vocab_size: int, *, bias: bool = False,
                 tied: nn.Embedding | None = None, scale: float | None = None,
                 final_softcap: float | None = None) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, vocab_size, bias=bias)
        if tied is not None:
            self.proj.weight = tied.weight
        self.scale = scale
        self.final_softcap = final_softcap

    def forward(self, hidden: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        if self.scale is not None:
            hidden = hidden * self.scale
        logits = self.proj(hidden)  # (B, T, C) -> (B, T, V)
        if self.final_softcap is not None:
            logits = torch.tanh(logits / self.final_softcap) * self.final_softcap
        return logits


class MLMHead(nn.Module):
    """BERT's masked-LM head: dense -> activation -> norm -> vocabulary projection.

    ``width`` (default C) is the width after ``dense``: ALBERT's and ELECTRA's heads map the
    hidden states to the token table's width E, which ``norm`` and the projection read.
    """

    def __init__(self, dim: int, vocab_size: int, activation: nn.Module, norm: nn.Module, *,
                 bias: bool = True, tied: nn.Embedding | None = None,
                 width: int | None = None) -> None:
        super().__init__()
        width = dim if width is None else width
        self.dense = nn.Linear(dim, width)
        self.act = activation
        self.norm = norm
        self.decoder = LMHead(width, vocab_size, bias=bias, tied=tied)

    def forward(self, hidden: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.decoder(self.norm(self.act(self.dense(hidden))))


def pool(hidden: Tensor, attention_mask: Tensor | None, how: Pooling) -> Tensor:
    """(B, T, C) -> (B, C): first token, mean over real tokens, or last real token."""
    if how == "cls":
        return hidden[:, 0]
    if attention_mask is None:
        return hidden.mean(dim=1) if how == "mean" else hidden[:, -1]
    keep = attention_mask.to(hidden.dtype)  # (B, T)
    if how == "mean":
        return (hidden * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp_min(1)
    # last real token; works for right padding (and for left padding, where it is T-1)
    positions = torch.arange(hidden.shape[1], device=hidden.device)
    last = (positions * attention_mask.to(positions.dtype)).argmax(dim=1)  # (B,)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class ClassifierHead(nn.Module):
    """Sequence classification: pool, optional norm (BEiT), optional dense+tanh pooler
    (BERT), dropout, linear."""

    def __init__(self, dim: int, n_classes: int, *, pooling: Pooling = "cls",
                 pooler: bool = False, dropout: float = 0.0, norm: nn.Module | None = None) -> None:
        super().__init__()
        self.pooling = pooling
        self.norm = norm
        self.pooler = nn.Sequential(nn.Linear(dim, dim), nn.Tanh()) if pooler else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(dim, n_classes)

    def forward(self, hidden: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        pooled = pool(hidden, attention_mask, self.pooling)  # (B, C)
        if self.norm is not None:
            pooled = self.norm(pooled)
        pooled = self.pooler(pooled)
        return self.out(self.dropout(pooled))  # (B, K)


class TokenClassifierHead(nn.Module):
    """Per-token classification (NER): dropout then linear."""

    def __init__(self, dim: int, n_classes: int, *, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(dim, n_classes)

    def forward(self, hidden: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.out(self.dropout(hidden))  # (B, T, K)
