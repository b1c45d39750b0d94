"""T5's bucketed relative position bias (Raffel et al. 2020, §2.1)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from txblocks.nn.positional import PositionalScheme

__all__ = ["RelativePositionBias", "relative_position_bucket"]


def relative_position_bucket(
    relative_position: Tensor,
    *,
    bidirectional: bool,
    num_buckets: int = 32,
    max_distance: int = 128,
) -> Tensor:
    """Map ``key_pos - query_pos`` to a bucket, as Mesh TensorFlow's T5 does.

    Half of the buckets (of each direction, when bidirectional) hold the exact distances
    ``0 .. max_exact - 1``; the others grow logarithmically up to ``max_distance``, beyond
    which every distance shares the last bucket. When bidirectional, keys after the query
    (positive relative positions) use the upper half of the buckets; when not, they all
    fall into bucket 0 with distance 0.

    Args:
        relative_position: integer tensor of ``key_pos - query_pos``, any shape.
        bidirectional: whether keys after the query are distinguished from those before.
        num_buckets: total number of buckets.
        max_distance: distance from which all positions share one bucket.

    Returns:
        Long tensor of the same shape, values in ``[0, num_buckets)``.
    """
    buckets = torch.zeros_like(relative_position, dtype=torch.long)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = -torch.clamp(relative_position, max=0)
    max_exact = num_buckets // 2
    if max_exact < 1 or max_distance <= max_exact:
        raise ValueError(
            f"relative position buckets need num_buckets >= {4 if bidirectional else 2} and "
            f"max_distance > {max_exact}, got num_buckets="
            f"{num_buckets * 2 if bidirectional else num_buckets}, max_distance={max_distance}"
        )
    is_small = distance < max_exact
    # log of 0 is -inf for the small distances; torch.where discards them.
    large = max_exact + (
        torch.log(distance.float() / max_exact)
        / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).to(torch.long)
    large = torch.clamp(large, max=num_buckets - 1)
    return buckets + torch.where(is_small, distance.long(), large)


class RelativePositionBias(PositionalScheme):
    """T5's learned relative position bias: one scalar per head and distance bucket.

    The score of query ``i`` (at key position ``q_offset + i``) and key ``j`` gets
    ``table[bucket(j - (q_offset + i)), h]`` (Raffel et al. 2020, §2.1; buckets from
    :func:`relative_position_bucket`). Buckets are bidirectional unless the attention
    is causal (T5's decoder). One table serves every layer of a stack, or, with ``layers``,
    each layer has its own (UMT5, Chung et al. 2023): ``relative_attention_bias`` is then a
    list of tables, and :attr:`per_layer` tells the stack to ask for each layer's bias with
    ``attention_bias(..., layer=i)``.

    Shapes: H heads, Tq query length, Tk key length.

    Args:
        n_heads: number of query heads.
        num_buckets: rows of the table (32 in T5).
        max_distance: distance from which all positions share a bucket (128 in T5).
        init_std: standard deviation of the initial table (T5 uses ``d_model ** -0.5``).
        layers: one table for each of this many layers; None: one table for the stack.
    """

    def __init__(
        self,
        n_heads: int,
        *,
        num_buckets: int = 32,
        max_distance: int = 128,
        init_std: float = 0.02,
        layers: int | None = None,
    ) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.init_std = init_std
        #: Whether each layer has its own table (its bias is asked for with ``layer=``).
        self.per_layer = layers is not None
        self.relative_attention_bias: nn.Module  # HF T5's name
        if layers is None:
            self.relative_attention_bias = nn.Embedding(num_buckets, n_heads)
        else:
            self.relative_attention_bias = nn.ModuleList(
                nn.Embedding(num_buckets, n_heads) for _ in range(layers))
        self.reset_parameters()

    def _tables(self) -> list[nn.Embedding]:
        table = self.relative_attention_bias
        return list(table) if isinstance(table, nn.ModuleList) else [table]  # type: ignore[list-item]

    def reset_parameters(self) -> None:
        """Draw the table(s) from N(0, init_std²)."""
        for table in self._tables():
            nn.init.normal_(table.weight, mean=0.0, std=self.init_std)

    def buckets(
        self, q_len: int, k_len: int, q_offset: int, causal: bool, device: torch.device
    ) -> Tensor:
        """Bucket indices ``(Tq, Tk)``; query i sits at key position ``q_offset + i``."""
        query_pos = torch.arange(q_len, dtype=torch.long, device=device)[:, None] + q_offset
        key_pos = torch.arange(k_len, dtype=torch.long, device=device)[None, :]
        return relative_position_bucket(
            key_pos - query_pos,
            bidirectional=not causal,
            num_buckets=self.num_buckets,
            max_distance=self.max_distance,
        )

    def attention_bias(
        self,
        q_len: int,
        k_len: int,
        q_offset: int,
        causal: bool,
        device: torch.device,
        dtype: torch.dtype,
        layer: int | None = None,
    ) -> Tensor:
        """Additive bias ``(1, H, Tq, Tk)`` in ``dtype``, differentiable in the table: the
        stack's table, or (per layer) the table of ``layer``.

        Raises:
            ValueError: a per-layer scheme asked without ``layer``, or for a layer it has no
                table for.
        """
        tables = self._tables()
        if self.per_layer:
            if layer is None or not 0 <= layer < len(tables):
                raise ValueError(f"this relative bias has one table per layer ({len(tables)}): "
                                 f"pass layer=0..{len(tables) - 1}, got {layer!r}")
            table = tables[layer]
        else:
            table = tables[0]
        buckets = self.buckets(q_len, k_len, q_offset, causal, device)  # (Tq, Tk)
        values = table(buckets)  # (Tq, Tk, H)
        return values.permute(2, 0, 1).unsqueeze(0).to(dtype)

    def extra_repr(self) -> str:
        layers = f", layers={len(self._tables())}" if self.per_layer else ""
        return f"num_buckets={self.num_buckets}, max_distance={self.max_distance}{layers}"
