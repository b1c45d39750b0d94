"""Token embeddings: tokens (+ segments) (+ positions), scaled, normed, dropped out, projected."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

ProjectAt = Literal["end", "tokens"]


class Embeddings(nn.Module):
    """Turns token ids into the first residual stream (B, T) -> (B, T, C).

    Shapes: B batch, T time, C d_model, E the token table's width (C without ``project``).

    Args:
        vocab_size, dim: the token table; ``dim`` is E when there is a ``project``.
        token_types: size of the segment (token-type) table; 0 for none.
        scale: multiplies the token embeddings (sqrt(d_model) for T5/BART-style models).
        norm: a norm after the sum (BERT), or None.
        dropout: dropout on the result.
        project: a linear layer E -> C from a narrower (or wider) token table to d_model
            (ALBERT's factorized embedding, Lan et al. 2020, §3.1), or None.
        project_at: where ``project`` runs: ``end``, after everything else (segments,
            positions and ``norm`` are E wide: ALBERT, ELECTRA-small), or ``tokens``, right
            after the table and ``scale`` (the rest is C wide: OPT-350m's ``project_in``).
    """

    def __init__(self, vocab_size: int, dim: int, *, token_types: int = 0, scale: float | None = None,
                 norm: nn.Module | None = None, dropout: float = 0.0,
                 project: nn.Module | None = None, project_at: ProjectAt = "end") -> None:
        super().__init__()
        if project_at not in ("end", "tokens"):
            raise ValueError(f"unknown project_at {project_at!r}; allowed: end, tokens")
        self.tokens = nn.Embedding(vocab_size, dim)
        after_tokens = getattr(project, "out_features", dim) if project_at == "tokens" else dim
        self.token_types = nn.Embedding(token_types, after_tokens) if token_types else None
        self.scale = scale
        self.norm = norm
        self.dropout = nn.Dropout(dropout)
        self.project = project
        self.project_at = project_at

    def forward(self, input_ids: Tensor | None, positions: Tensor | None = None,
                token_type_ids: Tensor | None = None, *,
                inputs_embeds: Tensor | None = None) -> Tensor:
        """``positions`` is the positional scheme's embedding (B|1, T, E or C), if it has one.

        ``inputs_embeds`` (B, T, E) replaces the token table's rows ``self.tokens(input_ids)``;
        everything after the lookup (scale, projection, segments, positions, norm) still
        applies, so ``inputs_embeds=self.tokens(input_ids)`` gives the same result.
        """
        x = self.tokens(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, E)
        if self.scale is not None:
            x = x * self.scale
        if self.project is not None and self.project_at == "tokens":
            x = self.project(x)  # (B, T, C)
        if self.token_types is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros(x.shape[:2], dtype=torch.long, device=x.device)
            x = x + self.token_types(token_type_ids)
        if positions is not None:
            x = x + positions
        if self.norm is not None:
            x = self.norm(x)
        x = self.dropout(x)
        if self.project is not None and self.project_at == "end":
            x = self.project(x)  # (B, T, E) -> (B, T, C)
        return x
