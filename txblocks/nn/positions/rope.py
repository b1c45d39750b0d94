"""Rotary position embeddings (RoPE, Su et al. 2021) and their context-extension scalings."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Union

import torch
from torch import Tensor

from txblocks.nn.positional import PositionalScheme

__all__ = [
    "DynamicNTKScaling",
    "LinearScaling",
    "Llama3Scaling",
    "RopeScaling",
    "RotaryPositions",
    "RotaryTables",
    "rope_inverse_frequencies",
]


@dataclass(frozen=True)
class LinearScaling:
    """Position interpolation (Chen et al. 2023, "Extending Context Window ... via PI").

    Every position is divided by ``factor`` (done as ``inv_freq / factor``, which is the
    same product, and what Hugging Face does).
    """

    factor: float


@dataclass(frozen=True)
class DynamicNTKScaling:
    """Dynamic NTK-aware scaling (bloc97 / emozilla; Hugging Face's ``dynamic`` rope_type).

    While the largest position of a call stays below ``max_seq_len`` nothing changes;
    beyond it, with ``L`` = largest position + 1 and ``R`` the rotary dim, the base becomes
    ``theta * ((factor * L / max_seq_len) - (factor - 1)) ** (R / (R - 2))``.
    """

    factor: float
    max_seq_len: int


@dataclass(frozen=True)
class Llama3Scaling:
    """Llama 3.1's frequency-dependent scaling (Hugging Face ``_compute_llama3_parameters``).

    Wavelengths shorter than ``original_max_seq_len / high_freq_factor`` are kept, longer
    than ``original_max_seq_len / low_freq_factor`` are divided by ``factor``, and those
    between are interpolated smoothly.
    """

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_seq_len: int = 8192


RopeScaling = Union[LinearScaling, DynamicNTKScaling, Llama3Scaling]


class RotaryTables(NamedTuple):
    """Per-forward RoPE state: float32 ``cos`` and ``sin``, each ``(B|1, T, 1, R)``.

    R is the rotary dim; the singleton axis broadcasts over heads in ``(B, T, H, D)``.
    """

    cos: Tensor
    sin: Tensor


def rope_inverse_frequencies(
    rotary_dim: int, theta: float | Tensor, device: torch.device
) -> Tensor:
    """``1 / theta^(2i/R)`` for ``i = 0 .. R/2 - 1`` in float32, as Hugging Face computes it."""
    two_i = torch.arange(0, rotary_dim, 2, dtype=torch.int64, device=device).float()
    exponents = two_i / rotary_dim
    return 1.0 / (theta**exponents)


def _llama3(inv_freq: Tensor, s: Llama3Scaling) -> Tensor:
    low_freq_wavelen = s.original_max_seq_len / s.low_freq_factor
    high_freq_wavelen = s.original_max_seq_len / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (s.original_max_seq_len / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def _rotate_half(x: Tensor) -> Tensor:
    """``(x1, x2) -> (-x2, x1)`` on the two halves of the last axis (GPT-NeoX, Llama)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _rotate_every_two(x: Tensor) -> Tensor:
    """``(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)`` on adjacent pairs (GPT-J)."""
    x1, x2 = x[..., ::2], x[..., 1::2]
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


class RotaryPositions(PositionalScheme):
    """Rotary position embeddings: q and k rotated by position (RoPE, Su et al. 2021).

    Each pair of dims ``(a_j, b_j)`` of the first ``rotary_dim`` dims of a query or key at
    position ``m`` is rotated by the angle ``m · θ_j`` with ``θ_j = theta^(-2j/rotary_dim)``
    (RoFormer, eq. 34), so that ``q_m · k_n`` depends only on ``m - n``. The remaining
    ``head_dim - rotary_dim`` dims pass unchanged (GPT-NeoX's ``rotary_pct``, GPT-J's
    ``rotary_dim``).

    Pairing: by default dim ``j`` pairs with ``j + rotary_dim/2`` ("rotate_half": GPT-NeoX,
    Llama, Hugging Face); with ``interleaved=True`` dims ``(2j, 2j+1)`` pair (GPT-J, the
    paper's layout). The two are the same rotation up to a fixed permutation of q and k's
    dims, but checkpoints trained with one need that one.

    The cos/sin tables are computed in float32 and cast to the input's dtype before the
    rotation, exactly as Hugging Face's Llama does.

    Shapes: B batch, T time, H heads (query or key/value), D head_dim, R rotary_dim.

    Args:
        head_dim: width D of one head.
        theta: the base of the frequencies (10000 in the paper; 500000 in Llama 3).
        fraction: share of each head that rotates; ``rotary_dim = int(head_dim * fraction)``
            must be even and positive.
        interleaved: pair adjacent dims (GPT-J) instead of the two halves.
        scaling: a context-extension scaling (:class:`LinearScaling`,
            :class:`DynamicNTKScaling`, :class:`Llama3Scaling`), or None.

    Raises:
        ValueError: ``rotary_dim`` odd or zero, or too small for dynamic NTK scaling.
    """

    def __init__(
        self,
        head_dim: int,
        *,
        theta: float = 10000.0,
        fraction: float = 1.0,
        interleaved: bool = False,
        scaling: RopeScaling | None = None,
    ) -> None:
        super().__init__()
        rotary_dim = int(head_dim * fraction)
        if rotary_dim <= 0 or rotary_dim % 2:
            raise ValueError(
                f"RoPE needs an even, positive rotary_dim = int(head_dim * fraction), got "
                f"int({head_dim} * {fraction}) = {rotary_dim}"
            )
        if isinstance(scaling, DynamicNTKScaling) and rotary_dim <= 2:
            raise ValueError(f"dynamic NTK scaling needs rotary_dim > 2, got {rotary_dim}")
        self.head_dim = head_dim
        self.rotary_dim = rotary_dim
        self.theta = float(theta)
        self.fraction = fraction
        self.interleaved = interleaved
        self.scaling = scaling

    def inverse_frequencies(self, position_ids: Tensor) -> Tensor:
        """The ``R/2`` float32 frequencies θ_j for a call with these ``position_ids``.

        Recomputed on every call (a handful of tiny ops) so that they stay float32 whatever
        dtype the model is cast to, and so that dynamic scaling sees the call's length.
        """
        device, s, r = position_ids.device, self.scaling, self.rotary_dim
        inv_freq = rope_inverse_frequencies(r, self.theta, device)
        if isinstance(s, LinearScaling):
            inv_freq = inv_freq / s.factor
        elif isinstance(s, Llama3Scaling):
            inv_freq = _llama3(inv_freq, s)
        elif isinstance(s, DynamicNTKScaling) and position_ids.numel():
            seq_len = (position_ids.max() + 1).float()  # a tensor: no host sync
            stretch = (s.factor * seq_len / s.max_seq_len) - (s.factor - 1)
            base = self.theta * stretch ** (r / (r - 2))
            inv_freq = torch.where(
                seq_len > s.max_seq_len, rope_inverse_frequencies(r, base, device), inv_freq
            )
        return inv_freq

    def rotary(self, position_ids: Tensor) -> RotaryTables:
        """cos/sin tables ``(B|1, T, 1, R)`` in float32 for ``position_ids (B|1, T)``."""
        freqs = position_ids[..., None].float() * self.inverse_frequencies(position_ids)
        if self.interleaved:
            angles = freqs.repeat_interleave(2, dim=-1)  # θ0, θ0, θ1, θ1, ...
        else:
            angles = torch.cat((freqs, freqs), dim=-1)  # θ0, θ1, ..., θ0, θ1, ...
        angles = angles.unsqueeze(-2)  # (B|1, T, 1, R)
        return RotaryTables(angles.cos(), angles.sin())

    def rotate(self, x: Tensor, rotary: RotaryTables) -> Tensor:
        """Rotate the first R dims of ``x (B, T, H, D)``; computed in ``x.dtype``."""
        cos, sin = rotary.cos.to(x.dtype), rotary.sin.to(x.dtype)
        turn = _rotate_every_two if self.interleaved else _rotate_half
        r = self.rotary_dim
        if r == x.shape[-1]:
            return x * cos + turn(x) * sin
        x_rot, x_pass = x[..., :r], x[..., r:]
        return torch.cat((x_rot * cos + turn(x_rot) * sin, x_pass), dim=-1)

    def extra_repr(self) -> str:
        return (
            f"head_dim={self.head_dim}, rotary_dim={self.rotary_dim}, theta={self.theta:g}, "
            f"interleaved={self.interleaved}, scaling={self.scaling}"
        )
