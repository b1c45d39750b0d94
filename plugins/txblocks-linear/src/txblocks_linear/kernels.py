"""Kernels ``linear`` (elu + 1 features) and ``performer`` (FAVOR+ random features).

Both replace ``softmax(q kᵀ)`` by ``φ(q) φ(k)ᵀ`` normalised per query, computed in
``O(T · M · D)`` through sums over keys (prefix sums when causal); see
:mod:`txblocks_linear.prefix`. They honour unmasked and causal masks with key padding
(padded keys' features are zeroed); anything needing the ``Tq × Tk`` score matrix
(a sliding window, packed sequences, a prefix, an additive bias, soft-capping,
dropout on the weights) is refused by ``why_not`` with the reason.

Shapes: B batch, Tq/Tk query/key length, H query heads, Hkv kv heads (G = H / Hkv),
D head_dim, M features.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from txblocks.attention.kernel import AttentionCall, AttentionKernel
from txblocks.attention.mask import AttentionMask, CausalMask
from txblocks_linear.features import elu_features, favor_features, orthogonal_gaussian
from txblocks_linear.prefix import linear_attention

__all__ = ["LinearKernel", "PerformerKernel", "mask_problems"]


def mask_problems(mask: AttentionMask) -> list[str]:
    """Why a feature-map kernel cannot honour ``mask``; [] when it can."""
    reasons = []
    if mask.bias is not None:
        reasons.append(
            "an additive attention bias (ALiBi, T5 relative buckets) needs the Tq×Tk score "
            "matrix, which linear attention never forms; use a position scheme without a "
            "bias (rope, sinusoidal, learned, none)"
        )
    if isinstance(mask, CausalMask):
        if mask.window is not None:
            reasons.append(
                f"sliding window (window={mask.window}) is not supported: prefix sums "
                "cannot forget keys that leave the window; use mask 'causal'"
            )
        if mask.q_offset < 0:
            reasons.append(f"causal mask with q_offset={mask.q_offset} < 0")
    elif type(mask).structure is not AttentionMask.structure:
        reasons.append(
            f"mask {type(mask).__name__} is not supported: only unmasked ('none') and "
            "causal masks, with key padding"
        )
    return reasons


class _FeatureKernel(AttentionKernel):
    """Shared checks and plumbing of the feature-map kernels."""

    chunk: int = 64

    def why_not(self, call: AttentionCall) -> list[str]:
        reasons = super().why_not(call) + mask_problems(call.mask)
        if call.softcap is not None:
            reasons.append("softcap needs the scores q·k, which linear attention never forms")
        if call.dropout > 0.0:
            reasons.append(
                f"dropout={call.dropout} on attention weights is not supported: there is "
                "no weight matrix to drop from; set attention dropout to 0"
            )
        if not call.dtype.is_floating_point:
            reasons.append(f"dtype {call.dtype} is not a floating-point type")
        return reasons

    def features(self, q: Tensor, k: Tensor, scale: float) -> tuple[Tensor, Tensor]:
        """φ(q) (B, Tq, H, M) and φ(k) (B, Tk, Hkv, M), float32."""
        raise NotImplementedError

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask, *, scale: float,
               dropout: float, softcap: float | None) -> Tensor:
        phi_q, phi_k = self.features(q.float(), k.float(), scale)
        if mask.key_padding is not None:
            phi_k = phi_k * mask.key_padding.to(phi_k.device)[:, :, None, None]
        phi_q = rearrange(phi_q, "b t (h g) m -> b t h g m", h=k.shape[2])
        out = linear_attention(phi_q, phi_k, v.float(), causal=isinstance(mask, CausalMask),
                               q_offset=mask.q_offset, chunk=self.chunk)
        return rearrange(out, "b t h g d -> b t (h g) d").to(q.dtype)


class LinearKernel(_FeatureKernel):
    """Linear attention with ``φ(x) = elu(x) + 1`` (Katharopoulos et al. 2020).

    ``scale`` is not used: the similarity is ``φ(q)·φ(k)``, not ``exp(q·k·scale)``.

    Args:
        chunk: queries per chunk of the causal prefix sums.
    """

    name = "linear"
    priority = -10

    def __init__(self, chunk: int = 64) -> None:
        self.chunk = chunk

    def features(self, q: Tensor, k: Tensor, scale: float) -> tuple[Tensor, Tensor]:
        return elu_features(q), elu_features(k)

    def __repr__(self) -> str:
        return f"LinearKernel(chunk={self.chunk})"


class PerformerKernel(_FeatureKernel, nn.Module):
    """FAVOR+ (Choromanski et al. 2021): softmax attention estimated by random features.

    An ``nn.Module`` (without parameters) so that it follows ``model.train()`` /
    ``model.eval()``: with ``redraw``, every training forward draws a new projection
    (kept for evaluation); otherwise the projection drawn first (from ``seed``) stays.
    q and k are multiplied by ``scale ** 0.5`` so that ``φ(q)·φ(k)`` estimates
    ``exp(q·k·scale)``.

    Args:
        n_features: M, random features per head.
        redraw: draw new features at every forward in training mode.
        seed: seeds the generator of the projections (reproducible draws).
        chunk: queries per chunk of the causal prefix sums.
    """

    name = "performer"
    priority = -10

    def __init__(self, n_features: int = 256, *, redraw: bool = True, seed: int = 0,
                 chunk: int = 64) -> None:
        nn.Module.__init__(self)
        self.n_features, self.redraw, self.seed, self.chunk = n_features, redraw, seed, chunk
        self.generator = torch.Generator().manual_seed(seed)
        self.projection: Tensor | None = None  # (M, D) float32, drawn at the first call

    def draw(self, dim: int) -> Tensor:
        """A new projection ``(M, D)`` from this kernel's generator (CPU, float32)."""
        return orthogonal_gaussian(self.n_features, dim, generator=self.generator)

    def projection_for(self, dim: int, device: torch.device) -> Tensor:
        """The projection used now, drawn anew when training with ``redraw``."""
        stale = self.projection is None or self.projection.shape[1] != dim
        if stale or (self.training and self.redraw):
            self.projection = self.draw(dim)
        if self.projection.device != device:
            self.projection = self.projection.to(device)
        return self.projection

    def features(self, q: Tensor, k: Tensor, scale: float) -> tuple[Tensor, Tensor]:
        w = self.projection_for(q.shape[-1], q.device)
        root = scale**0.5
        return (favor_features(q * root, w, is_query=True),
                favor_features(k * root, w, is_query=False))

    def __repr__(self) -> str:
        return (f"PerformerKernel(n_features={self.n_features}, redraw={self.redraw}, "
                f"seed={self.seed}, chunk={self.chunk})")
