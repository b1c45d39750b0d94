"""Learned absolute position embeddings (GPT-2, BERT, BART)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from txblocks.nn.positional import PositionalScheme

__all__ = ["LearnedPositions"]


class LearnedPositions(PositionalScheme):
    """A learned table of absolute positions added to the tokens (GPT-2, BERT, BART).

    Position ``p`` reads row ``p + offset`` of an ``nn.Embedding`` of
    ``max_seq_len + offset`` rows. BART and mBART use ``offset=2`` (their first two rows
    are a leftover of fairseq's padding-aware positions and are never read); GPT-2 and
    BERT use 0. Rows are initialised from N(0, 0.02²), as in GPT-2.

    Shapes: B batch, T time, d d_model.

    Args:
        d_model: width of the embeddings.
        max_seq_len: number of positions, ``0 .. max_seq_len - 1``.
        offset: rows skipped at the start of the table.
    """

    def __init__(self, d_model: int, max_seq_len: int, offset: int = 0) -> None:
        super().__init__()
        if max_seq_len < 1 or offset < 0:
            raise ValueError(
                f"learned positions need max_seq_len >= 1 and offset >= 0, "
                f"got max_seq_len={max_seq_len}, offset={offset}"
            )
        self.max_seq_len = max_seq_len
        self.offset = offset
        self.embedding = nn.Embedding(max_seq_len + offset, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw the table from N(0, 0.02²)."""
        nn.init.normal_(self.embedding.weight, mean=0.0, std=0.02)

    def embed(self, position_ids: Tensor) -> Tensor:
        """Position embeddings ``(B|1, T, d)`` for ``position_ids (B|1, T)``.

        Raises:
            ValueError: a position outside ``[0, max_seq_len)``.
        """
        # The range check reads values back to the host, which torch.compile cannot trace.
        if position_ids.numel() and not torch.compiler.is_compiling():
            low, high = torch.stack(torch.aminmax(position_ids)).tolist()  # one host sync
            if low < 0 or high >= self.max_seq_len:
                bad = high if high >= self.max_seq_len else low
                raise ValueError(
                    f"learned positions: position {bad} is outside [0, {self.max_seq_len}); "
                    f"this table has max_seq_len={self.max_seq_len} rows. Use shorter inputs "
                    "(prompt + generated tokens) or build the model with a larger max_seq_len"
                )
        return self.embedding(position_ids + self.offset)

    def extra_repr(self) -> str:
        return f"max_seq_len={self.max_seq_len}, offset={self.offset}"
