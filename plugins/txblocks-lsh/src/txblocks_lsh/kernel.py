"""``lsh``: Reformer's locality-sensitive-hashing attention as a txblocks kernel.

See :mod:`txblocks_lsh.attention` for the algorithm and its two documented choices
(q and k hashed separately; each query also sees its own position). Time and memory
``O(R · T · C · D)`` for R rounds and chunks of C: linear in T.

Shapes: B batch, Tq/Tk query/key length, H query heads, Hkv kv heads, D head_dim.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor

from txblocks.attention.kernel import AttentionCall, AttentionKernel
from txblocks.attention.mask import AttentionMask, CausalMask
from txblocks_lsh.attention import Keep, lsh_attention
from txblocks_lsh.hashing import ChunkPlan, hash_buckets, plan_chunks, random_rotations

__all__ = ["LSHKernel"]


def mask_keep(mask: AttentionMask) -> Keep | None:
    """The mask's structure as a function of (query, key) positions, or None if unsupported."""
    if isinstance(mask, CausalMask):
        window = mask.window

        def causal(q: Tensor, k: Tensor) -> Tensor:
            keep = k <= q
            return keep if window is None else keep & (k > q - window)

        return causal
    if type(mask).structure is AttentionMask.structure:  # no structure: 'none'
        return lambda q, k: torch.ones((), dtype=torch.bool, device=q.device).expand(
            torch.broadcast_shapes(q.shape, k.shape))
    return None


class LSHKernel(AttentionKernel):
    """Reformer LSH attention (Kitaev et al. 2020): hash, sort, chunk, attend, combine rounds.

    Args:
        n_buckets: buckets per round (1 or even); None picks ``2·ceil(Tk / 2C)`` (about
            C keys per bucket, as the paper advises), or 1 when Tk <= C.
        n_hashes: R, hash rounds (more rounds: fewer missed keys, R times the cost).
        chunk: C, sorted keys per chunk; each query reads its chunk and the previous one.
        seed: seeds the random rotations (fixed per kernel: reproducible outputs).
    """

    name = "lsh"
    priority = -10

    def __init__(self, n_buckets: int | None = None, *, n_hashes: int = 2, chunk: int = 64,
                 seed: int = 0) -> None:
        if n_buckets is not None and (n_buckets < 1 or (n_buckets > 1 and n_buckets % 2)):
            raise ValueError(f"lsh: n_buckets must be 1 or even, got {n_buckets}")
        if n_hashes < 1 or chunk < 1:
            raise ValueError(f"lsh: n_hashes and chunk must be >= 1, got {n_hashes}, {chunk}")
        self.n_buckets, self.n_hashes, self.chunk, self.seed = n_buckets, n_hashes, chunk, seed
        self._rotations: dict[tuple[int, int, torch.device], Tensor] = {}

    def buckets_for(self, k_len: int) -> int:
        """Buckets used for Tk keys."""
        if self.n_buckets is not None:
            return self.n_buckets
        return 1 if k_len <= self.chunk else 2 * -(-k_len // (2 * self.chunk))

    def rotations(self, dim: int, n_buckets: int, device: torch.device) -> Tensor:
        """The random rotations ``(D, R, nb / 2)``: drawn from ``seed``, the same every call."""
        key = (dim, n_buckets, device)
        if key not in self._rotations:
            gen = torch.Generator().manual_seed(self.seed)
            rotations = random_rotations(dim, self.n_hashes, n_buckets, generator=gen)
            self._rotations[key] = rotations.to(device)
        return self._rotations[key]

    def why_not(self, call: AttentionCall) -> list[str]:
        reasons = super().why_not(call)
        mask = call.mask
        if mask.bias is not None:
            reasons.append(
                "an additive attention bias (ALiBi, T5 relative buckets) is not supported: "
                "use a position scheme without a bias (rope, sinusoidal, learned, none)"
            )
        if mask_keep(mask) is None:
            reasons.append(
                f"mask {type(mask).__name__} is not supported: only unmasked ('none'), "
                "'causal' and 'sliding_window' masks, with key padding"
            )
        if call.dropout > 0.0:
            reasons.append(
                f"dropout={call.dropout} on attention weights is not supported by lsh; "
                "set attention dropout to 0"
            )
        if not call.dtype.is_floating_point:
            reasons.append(f"dtype {call.dtype} is not a floating-point type")
        return reasons

    def plan(self, q: Tensor, k: Tensor, mask: AttentionMask) -> ChunkPlan:
        """Hash and sort one call: q (B, Tq, H, D), k (B, Tk, Hkv, D) (kv heads repeated)."""
        groups = q.shape[2] // k.shape[2]
        qh = rearrange(q, "b t h d -> b h t d")
        kh = rearrange(k, "b t h d -> b h t d").repeat_interleave(groups, dim=1)
        n_buckets = self.buckets_for(k.shape[1])
        rotations = self.rotations(q.shape[-1], n_buckets, q.device)
        q_positions = torch.arange(q.shape[1], device=q.device) + mask.q_offset
        return plan_chunks(hash_buckets(qh, rotations, n_buckets),
                           hash_buckets(kh, rotations, n_buckets), q_positions, self.chunk)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask, *, scale: float,
               dropout: float, softcap: float | None) -> Tensor:
        groups = q.shape[2] // k.shape[2]
        with torch.no_grad():
            plan = self.plan(q, k, mask)
        keep = mask_keep(mask)
        if keep is None:  # callers check why_not first; AttentionKernel.__call__ does
            raise ValueError(f"lsh cannot honour mask {type(mask).__name__}")
        out = lsh_attention(
            rearrange(q, "b t h d -> b h t d"),
            rearrange(k, "b t h d -> b h t d").repeat_interleave(groups, dim=1),
            rearrange(v, "b t h d -> b h t d").repeat_interleave(groups, dim=1),
            plan, keep=keep, key_padding=mask.key_padding, q_offset=mask.q_offset,
            scale=scale, softcap=softcap,
        )
        return rearrange(out, "b h t d -> b t h d")

    def __repr__(self) -> str:
        return (f"LSHKernel(n_buckets={self.n_buckets}, n_hashes={self.n_hashes}, "
                f"chunk={self.chunk}, seed={self.seed})")
