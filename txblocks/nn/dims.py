"""The shape of a model, handed to component factories that need it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelDims:
    """Sizes every component may need.

    Attributes:
        d_model: width of the residual stream.
        n_heads: query heads.
        n_kv_heads: key/value heads (``n_heads`` for MHA, 1 for MQA, between for GQA).
        head_dim: width of one head.
        max_seq_len: the longest sequence the model is built for.
        n_layers: blocks in the stack being built.
        vocab_size: tokens in the vocabulary (0 where there is none).
        grid: the patch grid (rows, columns) of a vision model; None for the others.
    """

    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    max_seq_len: int
    n_layers: int
    vocab_size: int = 0
    grid: tuple[int, int] | None = None
