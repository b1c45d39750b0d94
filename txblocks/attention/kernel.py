"""The attention-kernel contract: what a kernel computes and how it says it cannot.

Shapes (xformers layout): B batch, Tq query length, Tk key length, H query heads,
Hkv key/value heads (H % Hkv == 0), D head_dim. q is (B, Tq, H, D), k and v are
(B, Tk, Hkv, D), the output is (B, Tq, H, D).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from txblocks.attention.mask import AttentionMask
from txblocks.errors import KernelUnavailableError

__all__ = ["SHORT_QUERY", "AttentionCall", "AttentionKernel"]

#: Queries this short are decoding steps: ``auto`` sends them to SDPA, which has the least
#: Python per call (docs/gpu.md, "Which kernel auto picks").
SHORT_QUERY = 8


@dataclass(frozen=True)
class AttentionCall:
    """Everything a kernel needs to know to decide whether it can run one call.

    ``requires_grad`` is True when autograd will need gradients of q, k, v or the mask's
    bias (a backward pass). ``q``, ``k`` and ``v`` are the call's tensors when it is made
    from them (:meth:`of`), so that a kernel can put their exact layout to its library;
    None for a call described by its sizes alone (``summary``, ``doctor``).
    """

    device: torch.device
    dtype: torch.dtype
    batch: int
    q_len: int
    k_len: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    mask: AttentionMask
    dropout: float = 0.0
    softcap: float | None = None
    requires_grad: bool = False
    q: Tensor | None = field(default=None, compare=False, repr=False)
    k: Tensor | None = field(default=None, compare=False, repr=False)
    v: Tensor | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(
        cls,
        q: Tensor,
        k: Tensor,
        mask: AttentionMask,
        dropout: float = 0.0,
        softcap: float | None = None,
        *,
        v: Tensor | None = None,
    ) -> AttentionCall:
        """Describe the call ``kernel(q (B, Tq, H, D), k (B, Tk, Hkv, D), v, mask)``."""
        tensors = [t for t in (q, k, v, mask.bias) if t is not None]
        return cls(
            device=q.device,
            dtype=q.dtype,
            batch=q.shape[0],
            q_len=q.shape[1],
            k_len=k.shape[1],
            n_heads=q.shape[2],
            n_kv_heads=k.shape[2],
            head_dim=q.shape[3],
            mask=mask,
            dropout=dropout,
            softcap=softcap,
            requires_grad=torch.is_grad_enabled() and any(t.requires_grad for t in tensors),
            q=q,
            k=k,
            v=v,
        )

    def __str__(self) -> str:
        return (
            f"device={self.device}, dtype={str(self.dtype).removeprefix('torch.')}, "
            f"B={self.batch}, Tq={self.q_len}, Tk={self.k_len}, H={self.n_heads}, "
            f"Hkv={self.n_kv_heads}, D={self.head_dim}, mask={type(self.mask).__name__}, "
            f"dropout={self.dropout}, softcap={self.softcap}, "
            f"grad={'yes' if self.requires_grad else 'no'}"
        )


class AttentionKernel:
    """Computes ``softmax(q kᵀ · scale [softcapped] + mask) v`` (Vaswani et al. 2017).

    Subclasses implement :meth:`attend`, extend :meth:`why_not` / :meth:`why_not_on`
    with what they cannot do (like xformers' ``not_supported_reasons``) and may say
    through :meth:`cost_rank` how fast they run a call, so that ``auto`` can pick the
    fastest kernel that can run it.

    Every kernel honours the shared contract: GQA shares kv head ``h // (H/Hkv)``
    with query head h; a query row with no allowed key outputs exactly 0 and has
    finite gradients.

    Attributes:
        name: the registry name.
        priority: breaks ties between equal ranks in ``auto`` (higher wins).
    """

    name: ClassVar[str] = "kernel"
    priority: ClassVar[int] = 0

    def why_not_on(self, device: torch.device) -> list[str]:
        """Reasons this kernel can never run on ``device`` (checked at build time); [] = can."""
        return []

    def cost_rank(self, call: AttentionCall) -> int:
        """How fast this kernel runs ``call`` against the others: lower is faster. ``auto``
        runs the lowest rank that can run the call, ties to the higher ``priority``. The
        built-ins rank by measured rules (docs/gpu.md): SDPA 10 or 30, xformers 20 or 40,
        eager 100; a plugin kernel that does not say ranks 50."""
        return 50

    def why_not(self, call: AttentionCall) -> list[str]:
        """Reasons this kernel cannot run ``call``; [] = it can."""
        reasons = self.why_not_on(call.device)
        if call.n_kv_heads < 1 or call.n_heads % call.n_kv_heads:
            reasons.append(f"H={call.n_heads} is not a multiple of Hkv={call.n_kv_heads}")
        if not 0.0 <= call.dropout < 1.0:
            reasons.append(f"dropout={call.dropout} is outside [0, 1)")
        if call.softcap is not None and call.softcap <= 0:
            reasons.append(f"softcap={call.softcap} must be > 0")
        return reasons

    def __call__(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: AttentionMask,
        *,
        scale: float,
        dropout: float = 0.0,
        softcap: float | None = None,
    ) -> Tensor:
        """Attend ``q (B, Tq, H, D)`` over ``k, v (B, Tk, Hkv, D)``; returns ``(B, Tq, H, D)``.

        Args:
            q, k, v: queries, keys and values in the xformers layout.
            mask: what each query may see, with any additive bias.
            scale: the factor on ``q kᵀ`` (usually ``D ** -0.5``).
            dropout: probability of dropping an attention weight; pass 0 in eval.
            softcap: if set, scores become ``softcap * tanh(scores / softcap)``
                before the mask is added (Gemma 2).

        Raises:
            ValueError: shapes that do not fit each other or the mask.
            KernelUnavailableError: this kernel cannot run the call; the message
                says why.
        """
        check_shapes(q, k, v, mask)
        reasons = self.why_not(AttentionCall.of(q, k, mask, dropout, softcap, v=v))
        if reasons:
            raise KernelUnavailableError(
                f"attention kernel {self.name!r} cannot run this call: {'; '.join(reasons)}"
            )
        return self.attend(q, k, v, mask, scale=scale, dropout=dropout, softcap=softcap)

    def attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: AttentionMask,
        *,
        scale: float,
        dropout: float,
        softcap: float | None,
    ) -> Tensor:
        """The computation itself, on inputs already checked by :meth:`__call__`."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def check_shapes(q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask) -> None:
    """Raise ValueError unless q (B, Tq, H, D), k/v (B, Tk, Hkv, D) fit each other and ``mask``."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            "attention expects q (B, Tq, H, D) and k, v (B, Tk, Hkv, D); got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.shape != v.shape or k.shape[0] != q.shape[0] or k.shape[3] != q.shape[3]:
        raise ValueError(
            f"k {tuple(k.shape)} and v {tuple(v.shape)} must be (B, Tk, Hkv, D) "
            f"matching q {tuple(q.shape)}"
        )
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"H={q.shape[2]} query heads is not a multiple of Hkv={k.shape[2]}")
    if (q.shape[1], k.shape[1]) != (mask.q_len, mask.k_len):
        raise ValueError(
            f"mask is for Tq={mask.q_len}, Tk={mask.k_len} but q, k have "
            f"Tq={q.shape[1]}, Tk={k.shape[1]}"
        )
