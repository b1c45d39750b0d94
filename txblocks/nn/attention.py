"""The attention layer: projections around an attention kernel.

Shapes: B batch, T time, C d_model, H query heads, Hkv key/value heads, D head_dim.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from txblocks.attention.kernel import AttentionKernel
from txblocks.attention.mask import AttentionMask
from txblocks.nn.cache import CrossCache, LayerCache

Rotate = Callable[[Tensor], Tensor]
#: ``(q (B, Tq, H, D), k (B, Tk, Hkv, D), attention) -> (B|1, H|1, Tq, Tk) | None``: one
#: layer's score term from a positional scheme (``PositionalScheme.score_bias``, bound by the
#: stack to the layer's index and query offset).
ScoreTerm = Callable[[Tensor, Tensor, "Attention"], "Tensor | None"]


class Attention(nn.Module):
    """Multi-head self-attention with grouped-query heads (Ainslie et al. 2023).

    Args:
        dim: d_model.
        n_heads: query heads H.
        n_kv_heads: key/value heads Hkv (H for MHA, 1 for MQA); H % Hkv == 0.
        head_dim: D.
        kernel: computes softmax(q kᵀ · scale + mask) v.
        qkv_bias / out_bias: biases of the projections.
        k_bias: the key projection's bias when it differs from ``qkv_bias`` (Whisper's
            ``k_proj`` has none); unfused projections only.
        fused_qkv: one (C -> (H + 2 Hkv) D) matrix instead of three.
        q_norm / k_norm: per-head norms of q and k (QK-norm, Dehghani et al. 2023).
        softcap: logit soft-capping c · tanh(s / c) (Gemma 2).
        scale: score scale, default D ** -0.5.
        dropout: dropout on attention probabilities (training only).
    """

    def __init__(
        self,
        dim: int,
        n_heads: int,
        n_kv_heads: int,
        head_dim: int,
        kernel: AttentionKernel,
        *,
        qkv_bias: bool = True,
        out_bias: bool = True,
        fused_qkv: bool = True,
        q_norm: nn.Module | None = None,
        k_norm: nn.Module | None = None,
        softcap: float | None = None,
        scale: float | None = None,
        dropout: float = 0.0,
        k_bias: bool | None = None,
    ) -> None:
        super().__init__()
        if k_bias is not None and k_bias != qkv_bias and fused_qkv:
            raise ValueError("k_bias differs from qkv_bias: that needs unfused projections "
                             "(fused_qkv=False)")
        if n_heads % n_kv_heads:
            raise ValueError(f"n_heads {n_heads} is not a multiple of n_kv_heads {n_kv_heads}")
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.kernel = kernel
        q_size, kv_size = n_heads * head_dim, n_kv_heads * head_dim
        self.sizes = (q_size, kv_size, kv_size)
        if fused_qkv:
            self.qkv = nn.Linear(dim, q_size + 2 * kv_size, bias=qkv_bias)
        else:
            self.q = nn.Linear(dim, q_size, bias=qkv_bias)
            self.k = nn.Linear(dim, kv_size, bias=qkv_bias if k_bias is None else k_bias)
            self.v = nn.Linear(dim, kv_size, bias=qkv_bias)
        self.out = nn.Linear(q_size, dim, bias=out_bias)
        self.q_norm, self.k_norm = q_norm, k_norm
        self.softcap = softcap
        self.scale = scale if scale is not None else head_dim**-0.5
        self.dropout = dropout

    def _heads(self, t: Tensor) -> Tensor:
        # b t (h d) -> b t h d; a view (einops' parsing costs more than the op here, per layer
        # and decoding step)
        return t.unflatten(-1, (-1, self.head_dim))

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, T, C) -> q (B, T, H, D), k and v (B, T, Hkv, D)."""
        if hasattr(self, "qkv"):
            q, k, v = self.qkv(x).split(self.sizes, dim=-1)
        else:
            q, k, v = self.q(x), self.k(x), self.v(x)
        return self._heads(q), self._heads(k), self._heads(v)

    def _cross_kv(self, context: Tensor, cache: CrossCache | None) -> tuple[Tensor, Tensor]:
        if cache is not None and cache.k is not None and cache.v is not None:
            return cache.k, cache.v
        k, v = self._heads(self.k(context)), self._heads(self.v(context))
        if self.k_norm is not None:
            k = self.k_norm(k)
        if cache is not None:
            cache.k, cache.v = k, v
        return k, v

    def forward(self, x: Tensor, mask: AttentionMask, rotate: Rotate | None = None,
                context: Tensor | None = None,
                cache: LayerCache | CrossCache | None = None, *,
                score: ScoreTerm | None = None) -> Tensor:
        """Self-attention over ``x`` (B, T, C), or cross-attention to ``context`` (B, S, C).

        ``cache`` holds the keys and values of earlier steps (a :class:`LayerCache`) or,
        for cross-attention, the encoder's keys and values (a :class:`CrossCache`).
        ``score`` (self-attention only) computes an additive term from the final q and k
        (cached keys included), added to the mask's bias before the kernel runs.
        """
        if context is not None:
            if hasattr(self, "qkv"):
                raise ValueError("cross-attention needs separate q/k/v projections (fused_qkv=False)")
            q = self._heads(self.q(x))
            if self.q_norm is not None:
                q = self.q_norm(q)
            k, v = self._cross_kv(context, cache if isinstance(cache, CrossCache) else None)
        else:
            q, k, v = self.project(x)
            if self.q_norm is not None and self.k_norm is not None:
                q, k = self.q_norm(q), self.k_norm(k)
            if rotate is not None:
                q, k = rotate(q), rotate(k)
            if isinstance(cache, LayerCache):
                k, v = cache.append(k, v)
            if score is not None:
                mask = mask.with_bias(score(q, k, self))
        o = self.kernel(
            q, k, v, mask,
            scale=self.scale,
            dropout=self.dropout if self.training else 0.0,
            softcap=self.softcap,
        )  # (B, T, H, D)
        return self.out(o.flatten(2))  # b t h d -> b t (h d)

    def extra_repr(self) -> str:
        return (
            f"heads={self.n_heads}, kv_heads={self.n_kv_heads}, head_dim={self.head_dim}, "
            f"kernel={getattr(self.kernel, 'name', type(self.kernel).__name__)}"
        )
