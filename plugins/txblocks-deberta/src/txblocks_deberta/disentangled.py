"""DeBERTa's disentangled attention as a positional scheme: content-to-position and
position-to-content score terms from each layer's q and k (He et al. 2021, "DeBERTa:
Decoding-enhanced BERT with Disentangled Attention", §3.1, eq. 4; v2's log buckets and
shared projections).

Shapes: B batch, H query heads, Hkv key/value heads, D head_dim, C d_model, Tq/Tk query/key
lengths, S the attention span (``position_buckets``, or ``max_relative_positions`` without
buckets); the relative-embedding table has 2·S rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from txblocks.nn.attention import Attention
from txblocks.nn.positional import PositionalScheme
from txblocks_deberta.buckets import relative_index

__all__ = ["TERMS", "DisentangledPositions", "Term"]

Term = Literal["c2p", "p2c"]
TERMS: tuple[Term, ...] = ("c2p", "p2c")


class DisentangledPositions(PositionalScheme):
    """DeBERTa-v2's relative attention: for query i and key j, with ``δ = bucket(i - j)``,

    ``score(i, j) = (q_i·k_j + q_i·Pk[δ] + k_j·Pq[δ]) · scale``

    where ``P = rel_embeddings`` (2·S rows, optionally LayerNorm-ed), ``Pq`` / ``Pk`` are P
    through the layer's own query / key projections (``share_att_key``; else through per-layer
    ``pos_query_proj`` / ``pos_key_proj``), ``q_i·Pk[δ]`` is the content-to-position term
    (``c2p``) and ``k_j·Pq[δ]`` the position-to-content term (``p2c``). :meth:`score_bias`
    returns the two terms times the attention's ``scale``; DeBERTa sets that scale to
    ``(D · (1 + number of terms)) ** -0.5`` (the spec's ``block.attention.scale``).
    ``δ`` is clamped to ``-S .. S - 1`` and indexes row ``δ + S``.

    Args:
        d_model: C, the width of the relative embeddings (the layers' input width).
        n_heads: H.
        n_kv_heads: Hkv (each key head serves ``H / Hkv`` consecutive query heads).
        head_dim: D.
        position_buckets: log buckets of relative positions (0: exact positions).
        max_relative_positions: the distance the last log bucket reaches; without buckets,
            the span S.
        terms: ``c2p``, ``p2c`` or both (HF's ``pos_att_type``).
        norm_eps: a LayerNorm of the relative embeddings with this epsilon (HF's
            ``norm_rel_ebd: layer_norm``); None: none.
        share_att_key: project the relative embeddings with each layer's q/k projections;
            False: with per-layer ``pos_query_proj`` / ``pos_key_proj`` (with biases).
        n_layers: layers of the stack (for the per-layer projections).
        dropout: dropout on the relative embeddings (training only; HF's ``pos_dropout``).
        init_std: standard deviation of the initial table.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int,
        head_dim: int,
        *,
        position_buckets: int = 256,
        max_relative_positions: int = 512,
        terms: Sequence[Term] = TERMS,
        norm_eps: float | None = None,
        share_att_key: bool = True,
        n_layers: int = 1,
        dropout: float = 0.0,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        unknown = sorted(set(terms) - set(TERMS))
        if unknown or not terms:
            raise ValueError(f"terms must be one or both of {', '.join(TERMS)}, got {list(terms)}")
        if n_heads % n_kv_heads:
            raise ValueError(f"n_heads {n_heads} is not a multiple of n_kv_heads {n_kv_heads}")
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.position_buckets = position_buckets
        self.max_relative_positions = max_relative_positions
        self.span = position_buckets if position_buckets > 0 else max_relative_positions
        self.terms = tuple(t for t in TERMS if t in terms)
        self.share_att_key = share_att_key
        self.init_std = init_std
        self.rel_embeddings = nn.Embedding(2 * self.span, d_model)
        self.norm = nn.LayerNorm(d_model, eps=norm_eps) if norm_eps is not None else None
        self.dropout = nn.Dropout(dropout)
        if not share_att_key:
            if "c2p" in self.terms:
                self.pos_key_proj = nn.ModuleList(
                    nn.Linear(d_model, n_kv_heads * head_dim) for _ in range(n_layers))
            if "p2c" in self.terms:
                self.pos_query_proj = nn.ModuleList(
                    nn.Linear(d_model, n_heads * head_dim) for _ in range(n_layers))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw the table from N(0, init_std²)."""
        nn.init.normal_(self.rel_embeddings.weight, mean=0.0, std=self.init_std)

    def relative_embeddings(self) -> Tensor:
        """The table ``(2·S, C)``, normed (and dropped out in training)."""
        table = self.rel_embeddings.weight
        if self.norm is not None:
            table = self.norm(table)
        return self.dropout(table)

    def width_problem(self, attention: Attention, layer: int) -> str | None:
        """Why this scheme cannot feed ``attention`` (of layer ``layer``): its relative
        embeddings are not as wide as what the attention's projections take; None if they are.
        The plugin checks every layer right after a build (``txblocks_after_build``)."""
        width, table = _input_width(attention), self.rel_embeddings.embedding_dim
        if width is None or width == table:
            return None
        return (f"disentangled: the relative embeddings are {table} wide, layer {layer}'s "
                f"attention takes {width}: the scheme was built for a narrower embedding sum "
                "(embedding.width with project_at: end); use project_at: tokens")

    def positions(self, attention: Attention, layer: int) -> tuple[Tensor | None, Tensor | None]:
        """``Pq (2·S, H, D)`` (for ``p2c``) and ``Pk (2·S, Hkv, D)`` (for ``c2p``) of one layer;
        None for a term it does not use."""
        problem = self.width_problem(attention, layer)
        if problem:
            raise ValueError(problem)
        table = self.relative_embeddings()
        use_q, use_k = "p2c" in self.terms, "c2p" in self.terms
        if self.share_att_key:
            project_q, project_k = _query_key_projections(attention)
        else:
            project_q = self.pos_query_proj[layer] if use_q else None
            project_k = self.pos_key_proj[layer] if use_k else None
        pos_q = project_q(table).unflatten(-1, (-1, self.head_dim)) if use_q else None
        pos_k = project_k(table).unflatten(-1, (-1, self.head_dim)) if use_k else None
        return pos_q, pos_k

    def index(self, q_len: int, k_len: int, q_offset: int, device: torch.device) -> Tensor:
        """Table rows ``(Tq, Tk)`` of each query-key pair (:func:`relative_index`)."""
        return relative_index(q_len, k_len, q_offset, self.span, buckets=self.position_buckets,
                              max_position=self.max_relative_positions, device=device)

    def score_bias(
        self, q: Tensor, k: Tensor, attention: Attention, *, layer: int, q_offset: int
    ) -> Tensor:
        """The c2p and p2c terms ``(B, H, Tq, Tk)`` of q ``(B, Tq, H, D)`` and k
        ``(B, Tk, Hkv, D)``, times ``attention.scale``."""
        batch, q_len, heads, _ = q.shape
        k_len = k.shape[1]
        pos_q, pos_k = self.positions(attention, layer)
        index = self.index(q_len, k_len, q_offset, q.device)
        group = heads // k.shape[2]
        total = q.new_zeros(())
        if pos_k is not None:  # content-to-position: q_i · Pk[δ(i, j)]
            pos_k = pos_k.repeat_interleave(group, dim=1)
            c2p = torch.einsum("bqhd,rhd->bhqr", q, pos_k.to(q.dtype))  # (B, H, Tq, 2S)
            total = total + c2p.gather(-1, index.expand(batch, heads, q_len, k_len))
        if pos_q is not None:  # position-to-content: k_j · Pq[δ(i, j)]
            keys = k.repeat_interleave(group, dim=2)
            p2c = torch.einsum("bkhd,rhd->bhkr", keys, pos_q.to(k.dtype))  # (B, H, Tk, 2S)
            rows = index.t().expand(batch, heads, k_len, q_len)
            total = total + p2c.gather(-1, rows).transpose(-1, -2)
        return total * attention.scale

    def extra_repr(self) -> str:
        return (f"span={self.span}, position_buckets={self.position_buckets}, "
                f"max_relative_positions={self.max_relative_positions}, "
                f"terms={'|'.join(self.terms)}, share_att_key={self.share_att_key}")


def _query_key_projections(attention: Attention) -> tuple[Callable[[Tensor], Tensor], ...]:
    """The layer's query and key projections alone (C -> H·D, C -> Hkv·D): the rows of a fused
    ``qkv`` (the values are never computed), or the separate ``q`` and ``k``."""
    fused = getattr(attention, "qkv", None)
    if fused is None:
        return attention.q, attention.k
    q_size, kv_size, _ = attention.sizes
    parts = ((0, q_size), (q_size, q_size + kv_size))
    bias = fused.bias

    def rows(start: int, end: int) -> Callable[[Tensor], Tensor]:
        return lambda x: F.linear(x, fused.weight[start:end],
                                  None if bias is None else bias[start:end])

    return tuple(rows(start, end) for start, end in parts)


def _input_width(attention: Attention) -> int | None:
    """The width the attention's q projection takes, or None where it has none."""
    proj = getattr(attention, "qkv", None) or getattr(attention, "q", None)
    return getattr(proj, "in_features", None)
