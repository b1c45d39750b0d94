"""Token embeddings: tokens (+ segments) (+ positions), scaled, normed, dropped out."""

from __future__ import annotations

from torch import Tensor, nn


class Embeddings(nn.Module):
    """Turns token ids into the first residual stream (B, T) -> (B, T, C).

    Args:
        vocab_size, dim: the token table.
        token_types: size of the segment (token-type) table; 0 for none.
        scale: multiplies the token embeddings (sqrt(d_model) for T5/BART-style models).
        norm: a norm after the sum (BERT), or None.
        dropout: dropout on the result.
    """

    def __init__(self, vocab_size: int, dim: int, *, token_types: int = 0, scale: float | None = None,
                 norm: nn.Module | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, dim)
        self.token_types = nn.Embedding(token_types, dim) if token_types else None
        self.scale = scale
        self.norm = norm
        self.dropout = nn.Dropout(dropout)

    def forward(self, input_ids: Tensor, positions: Tensor | None = None,
                token_type_ids: Tensor | None = None) -> Tensor:
        """``positions`` is the positional scheme's embedding (B|1, T, C), if it has one."""
        x = self.tokens(input_ids)
        if self.scale is not None:
            x = x * self.scale
        if self.token_types is not None:
            if token_type_ids is None:
                token_type_ids = input_ids.new_zeros(input_ids.shape)
            x = x + self.token_types(token_type_ids)
        if positions is not None:
            x = x + positions
        if self.norm is not None:
            x = self.norm(x)
        return self.dropout(x)
