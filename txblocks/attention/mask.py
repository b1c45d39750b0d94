"""Attention masks: what the queries of one attention call may attend to.

A mask object describes one call; it turns into whatever a kernel takes: a dense
boolean keep-mask, a dense additive tensor, SDPA's ``is_causal`` flag, or one of
xformers' ``AttentionBias`` classes.

Shapes: B batch, Tq query length, Tk key length, H query heads.
Query ``i`` sits at absolute position ``q_offset + i``, measured in key positions.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

import torch
from torch import Tensor

from txblocks.attention.xformers_bias import XFormersStructure

__all__ = ["AttentionMask", "BlockDiagonalMask", "CausalMask", "FullMask", "PrefixLMMask"]

Device = torch.device | str


@dataclass(frozen=True, eq=False)
class AttentionMask:
    """What the queries of one attention call may attend to (base class).

    Subclasses describe a *structure* (causal, banded, block-diagonal, ...) by
    overriding :meth:`structure`; key padding and an additive positional bias
    compose with any structure here.

    Args:
        q_len: Tq, the number of queries.
        k_len: Tk, the number of keys.
        q_offset: absolute position of query 0 in key positions. Defaults to
            ``k_len - q_len``: queries are the last Tq positions (bottom-right
            aligned, as with a KV cache).
        key_padding: bool ``(B, Tk)``, True marks a real token.
        bias: additive float ``(B|1, H|1, Tq, Tk)`` from a positional scheme
            (ALiBi, T5 relative buckets); it may require grad.
    """

    q_len: int
    k_len: int
    _: KW_ONLY
    q_offset: int = None  # type: ignore[assignment]  # set in __post_init__
    key_padding: Tensor | None = None
    bias: Tensor | None = None
    # Dense forms computed once and shared by every layer that uses this mask object.
    _memo: dict[tuple[Any, ...], Any] = field(default_factory=dict, init=False, repr=False)

    def _cached(self, key: tuple[Any, ...], make: Any) -> Any:
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def __post_init__(self) -> None:
        name = type(self).__name__
        if self.q_len < 1 or self.k_len < 1:
            raise ValueError(
                f"{name}: q_len and k_len must be >= 1, got {self.q_len}, {self.k_len}"
            )
        if self.q_offset is None:
            object.__setattr__(self, "q_offset", self.k_len - self.q_len)
        pad = self.key_padding
        shape = (self.q_len, self.k_len)
        if pad is not None and (pad.dtype != torch.bool or pad.shape[1:] != shape[1:]):
            raise ValueError(
                f"{name}: key_padding must be a bool tensor (B, Tk={self.k_len}) with True for "
                f"real tokens, got {pad.dtype} {tuple(pad.shape)}"
            )
        bias = self.bias
        if bias is not None and (bias.ndim != 4 or tuple(bias.shape[-2:]) != shape):
            raise ValueError(
                f"{name}: bias must be (B|1, H|1, Tq={self.q_len}, Tk={self.k_len}), "
                f"got {tuple(bias.shape)}"
            )

    # -- what subclasses override -------------------------------------------------

    def structure(self, device: Device) -> Tensor | None:
        """Bool keep-mask ``(B|1, Tq, Tk)`` of the structure alone; None allows everything."""
        return None

    def _sdpa_is_causal(self) -> bool:
        """True when :meth:`structure` is exactly SDPA's ``is_causal`` (top-left triangle)."""
        return False

    def _xformers_structure(self) -> XFormersStructure | None:
        """The xformers ``AttentionBias`` class equal to :meth:`structure` (no rows empty), as a
        plain description; None when xformers has no such class."""
        return None

    def _allows_everything(self) -> bool:
        """True when :meth:`structure` is None (known without building a tensor)."""
        return type(self).structure is AttentionMask.structure

    def _every_row_kept(self) -> bool:
        """True when the structure alone leaves every query at least one key (known without
        looking at a tensor, so the kernels skip zeroing empty rows)."""
        return False

    # -- derived forms --------------------------------------------------------------

    def positions(self, device: Device) -> tuple[Tensor, Tensor]:
        """Absolute positions of queries ``(Tq, 1)`` and keys ``(1, Tk)``."""
        q = torch.arange(self.q_len, device=device) + self.q_offset
        k = torch.arange(self.k_len, device=device)
        return q[:, None], k[None, :]

    def keep(self, device: Device) -> Tensor | None:
        """Bool ``(B|1, 1, Tq, Tk)``: the structure AND the key padding; None allows everything."""
        return self._cached(("keep", str(device)), lambda: self._keep(device))

    def _keep(self, device: Device) -> Tensor | None:
        """Uncached :meth:`keep`."""
        keep = self.structure(device)
        keep = None if keep is None else keep[:, None]
        if self.key_padding is not None:
            pad = self.key_padding.to(device)[:, None, None, :]
            keep = pad.expand(-1, -1, self.q_len, -1) if keep is None else keep & pad
        return keep

    def empty_rows(self, device: Device) -> Tensor | None:
        """Bool ``(B|1, 1, Tq, 1)``: queries with no allowed key (their output is 0)."""
        return self._cached(("empty_rows", str(device)), lambda: self._empty_rows(device))

    def _empty_rows(self, device: Device) -> Tensor | None:
        """Uncached :meth:`empty_rows`."""
        if self.key_padding is None and self._every_row_kept():
            return None
        keep = self.keep(device)
        return None if keep is None else ~keep.any(dim=-1, keepdim=True)

    def additive(self, dtype: torch.dtype, device: Device) -> Tensor | None:
        """Float ``(B|1, H|1, Tq, Tk)``: ``bias`` where kept, ``finfo(dtype).min`` where masked.

        The masked value is finite, so a row with no allowed key still has a
        defined softmax (the kernels then zero it) and finite gradients.
        """
        return self._cached(("additive", str(dtype), str(device)),
                            lambda: self._additive(dtype, device))

    def _additive(self, dtype: torch.dtype, device: Device) -> Tensor | None:
        """Uncached :meth:`additive`."""
        keep = self.keep(device)
        bias = None if self.bias is None else self.bias.to(device=device, dtype=dtype)
        if keep is None:
            return bias
        if bias is None:
            bias = torch.zeros((), dtype=dtype, device=device)
        return torch.where(keep, bias, torch.finfo(dtype).min)

    def sdpa_needs_tensor(self) -> bool:
        """True when SDPA needs a dense ``(B|1, H|1, Tq, Tk)`` mask tensor for this call
        (key padding, an additive bias, or a structure that is neither everything
        nor ``is_causal``). Known without building a tensor."""
        if self.key_padding is not None or self.bias is not None:
            return True
        return not (self._allows_everything() or self._sdpa_is_causal())

    def sdpa(self, dtype: torch.dtype, device: Device) -> tuple[Tensor | None, bool]:
        """``(attn_mask, is_causal)`` for :func:`torch.nn.functional.scaled_dot_product_attention`.

        ``is_causal=True`` only when it is exact (top-left causal, no padding, no
        bias); otherwise the additive tensor (finite, so fully masked rows cannot
        produce NaN in any SDPA backend).
        """
        return self._cached(("sdpa", str(dtype), str(device)),
                            lambda: self._sdpa(dtype, device))

    def _sdpa(self, dtype: torch.dtype, device: Device) -> tuple[Tensor | None, bool]:
        """Uncached :meth:`sdpa`."""
        if self.key_padding is None and self.bias is None and self._sdpa_is_causal():
            return None, True
        return self.additive(dtype, device), False

    def xformers_parts(
        self, dtype: torch.dtype, device: Device
    ) -> tuple[XFormersStructure | None, Tensor | None]:
        """What ``xformers.ops.memory_efficient_attention`` takes, as plain parts.

        ``(structure, tensor)``: an xformers bias class where one is exact (no key padding),
        carrying the positional bias when the class takes a tensor; else no structure and
        the dense additive tensor ``(B|1, H|1, Tq, Tk)`` (or None: no mask at all).
        Block-diagonal structures describe the batch flattened to ``(1, B*T)``.
        """
        if self.key_padding is None:
            fast = self._xformers_structure()
            if fast is not None and self.bias is None:
                return fast, None
            if fast is not None and fast.kind == "LowerTriangularMask":
                tensor = self.bias.to(device=device, dtype=dtype)  # type: ignore[union-attr]
                return XFormersStructure("LowerTriangularMaskWithTensorBias"), tensor
        return None, self.additive(dtype, device)

    def xformers(self, dtype: torch.dtype, device: Device) -> Any:
        """The bias for ``xformers.ops.memory_efficient_attention``: an
        ``xformers.ops.fmha.attn_bias.AttentionBias`` object or a tensor (see
        :meth:`xformers_parts`); imports xformers."""
        structure, tensor = self.xformers_parts(dtype, device)
        return tensor if structure is None else structure.build(tensor, device)

    def with_bias(self, bias: Tensor | None) -> AttentionMask:
        """A copy with the additive ``bias (B|1, H|1, Tq, Tk)`` added to any existing one."""
        if bias is None:
            return self
        return dataclasses.replace(self, bias=bias if self.bias is None else self.bias + bias)


@dataclass(frozen=True, eq=False)
class FullMask(AttentionMask):
    """Every query sees every (non-padded) key: encoders, cross-attention."""


@dataclass(frozen=True, eq=False)
class CausalMask(AttentionMask):
    """Query at position p sees keys j <= p; with ``window`` w only p - w < j <= p.

    The window counts the query's own position: w keys in all (Mistral /
    Hugging Face ``sliding_window`` semantics; Beltagy et al. 2020, "Longformer",
    https://arxiv.org/abs/2004.05150; Jiang et al. 2023, "Mistral 7B").
    """

    _: KW_ONLY
    window: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.window is not None and self.window < 1:
            raise ValueError(f"CausalMask: window must be >= 1, got {self.window}")

    def _allows_everything(self) -> bool:
        last = self.q_offset + self.q_len - 1
        return self.q_offset >= self.k_len - 1 and (self.window is None or self.window > last)

    def structure(self, device: Device) -> Tensor | None:
        if self._allows_everything():
            return None  # every query sees every key (a decoding step): no mask at all
        q, k = self.positions(device)
        keep = k <= q
        if self.window is not None:
            keep = keep & (k > q - self.window)
        return keep[None]

    def _sdpa_is_causal(self) -> bool:
        return self.window is None and self.q_offset == 0

    def _every_row_kept(self) -> bool:
        # the query at p keeps key p itself, which exists when 0 <= p < Tk
        return 0 <= self.q_offset <= self.k_len - self.q_len

    def _xformers_structure(self) -> XFormersStructure | None:
        bottom_right = self.q_offset == self.k_len - self.q_len and self.q_offset >= 0
        if self.window is None and self.q_offset == 0:
            return XFormersStructure("LowerTriangularMask")
        if self.window is None and bottom_right:
            return XFormersStructure("LowerTriangularFromBottomRightMask")
        if self.window is not None and bottom_right:
            # xformers' window_size counts keys i - w < j <= i, as ours does.
            return XFormersStructure("LowerTriangularFromBottomRightLocalAttentionMask",
                                     window=self.window)
        return None


@dataclass(frozen=True, eq=False)
class PrefixLMMask(AttentionMask):
    """Bidirectional over a prefix, causal after it: query p sees j <= p or j < prefix.

    Raffel et al. 2020, "Exploring the Limits of Transfer Learning" (T5), §3.2.1;
    Dong et al. 2019, "Unified Language Model Pre-training" (UniLM).

    Args:
        prefix_lengths: one length for every row, or one per row (``B`` ints or a
            ``(B,)`` integer tensor), in key positions.
    """

    _: KW_ONLY
    prefix_lengths: Tensor | Sequence[int] | int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        lengths = torch.as_tensor(self.prefix_lengths)
        if lengths.dtype.is_floating_point or lengths.ndim > 1 or bool((lengths < 0).any()):
            raise ValueError(
                "PrefixLMMask: prefix_lengths must be a non-negative int or one int per row, "
                f"got {self.prefix_lengths!r}"
            )

    def _every_row_kept(self) -> bool:
        # as CausalMask: the query at p keeps key p itself; the prefix only adds keys
        return 0 <= self.q_offset <= self.k_len - self.q_len

    def structure(self, device: Device) -> Tensor:
        q, k = self.positions(device)
        lengths = torch.as_tensor(self.prefix_lengths, device=device).reshape(-1, 1, 1)
        return (k <= q)[None] | (k < lengths)


@dataclass(frozen=True, eq=False)
class BlockDiagonalMask(AttentionMask):
    """Packed sequences: a query sees only keys of its own sequence (optionally causal).

    Several sequences are concatenated in each row; ``seq_lens[b]`` lists their
    lengths, summing to Tk. Query i belongs to the sequence holding its absolute
    position ``q_offset + i``. With ``window`` w, causal attention is further
    limited to the w most recent keys (as :class:`CausalMask`).

    Args:
        seq_lens: per row, the lengths of the packed sequences.
        causal: whether each sequence is causal.
        window: optional sliding window (requires ``causal``).
    """

    _: KW_ONLY
    seq_lens: Sequence[Sequence[int]]
    causal: bool = True
    window: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        seq_lens = tuple(tuple(int(n) for n in row) for row in self.seq_lens)
        object.__setattr__(self, "seq_lens", seq_lens)
        for b, row in enumerate(self.seq_lens):
            if any(n < 0 for n in row) or sum(row) != self.k_len:
                raise ValueError(
                    f"BlockDiagonalMask: seq_lens[{b}] = {list(row)} must be non-negative "
                    f"lengths summing to Tk={self.k_len}"
                )
        if not self.seq_lens:
            raise ValueError("BlockDiagonalMask: seq_lens needs one list of lengths per row")
        if self.q_offset < 0 or self.q_offset + self.q_len > self.k_len:
            raise ValueError(
                f"BlockDiagonalMask: queries (q_offset={self.q_offset}, Tq={self.q_len}) must "
                f"lie within the Tk={self.k_len} key positions"
            )
        if self.window is not None and (self.window < 1 or not self.causal):
            raise ValueError(
                f"BlockDiagonalMask: window must be >= 1 and causal, got {self.window}"
            )

    def structure(self, device: Device) -> Tensor:
        positions = torch.arange(self.k_len, device=device)
        ends = [torch.tensor([*itertools.accumulate(row)], device=device) for row in self.seq_lens]
        # (B, Tk): index of the packed sequence holding each key position
        segments = torch.stack([torch.searchsorted(e, positions, right=True) for e in ends])
        q_seg = segments[:, self.q_offset : self.q_offset + self.q_len]
        keep = q_seg[:, :, None] == segments[:, None, :]
        q, k = self.positions(device)
        if self.causal:
            keep = keep & (k <= q)
        if self.window is not None:
            keep = keep & (k > q - self.window)
        return keep

    def _xformers_structure(self) -> XFormersStructure | None:
        if self.q_len != self.k_len or self.q_offset != 0:
            return None
        flat = tuple(n for row in self.seq_lens for n in row if n > 0)  # batch as (1, B*T)
        if self.window is not None:
            return XFormersStructure("BlockDiagonalCausalLocalAttentionMask", self.window, flat)
        kind = "BlockDiagonalCausalMask" if self.causal else "BlockDiagonalMask"
        return XFormersStructure(kind, seqlens=flat)
