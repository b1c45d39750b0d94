"""Feature maps φ with ``φ(q)·φ(k)`` replacing (or estimating) ``exp(q·k)``.

* ``elu_features``: ``elu(x) + 1`` (Katharopoulos et al. 2020, §3.2.1, eq. 7).
* ``favor_features``: FAVOR+ positive orthogonal random features (Choromanski et al.
  2021, "Rethinking Attention with Performers", https://arxiv.org/abs/2009.14794,
  §2.3 and Lemma 1): ``E_ω[exp(ω·x - |x|²/2) exp(ω·y - |y|²/2)] = exp(x·y)`` for
  ``ω ~ N(0, I)``; drawing the ω orthogonal (§2.4, Theorem 2) lowers the variance.

Shapes: ``...`` any leading dims, D head_dim, M features.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["elu_features", "favor_features", "orthogonal_gaussian"]


def elu_features(x: Tensor) -> Tensor:
    """``elu(x) + 1``, elementwise: ``(..., D) -> (..., D)``, strictly positive."""
    return F.elu(x) + 1.0


def orthogonal_gaussian(n_features: int, dim: int, *, generator: torch.Generator) -> Tensor:
    """M random rows ``(M, D)``: orthogonal within each block of D, lengths of Gaussian rows.

    Each block is Haar-orthogonal (QR of a Gaussian matrix with the signs of R's
    diagonal fixed); each row is then scaled to the length of an independent N(0, I_D)
    vector, so that every row is marginally N(0, I_D) (Choromanski et al. 2021, §2.4).
    """
    gaussian = torch.randn(math.ceil(n_features / dim), dim, dim, generator=generator)
    q, r = torch.linalg.qr(gaussian)  # batched over the blocks
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    rows = q.transpose(-1, -2).reshape(-1, dim)[:n_features]
    lengths = torch.randn(n_features, dim, generator=generator).norm(dim=1)
    return rows * lengths[:, None]


def favor_features(x: Tensor, projection: Tensor, *, is_query: bool) -> Tensor:
    """Positive random features ``(..., D) -> (..., M)``, up to a per-query constant.

    ``φ_r(x) ∝ exp(ω_r·x - |x|²/2)``. Written as ``exp(-|x - ω_r|²/2)`` for keys
    (in ``(0, 1]``: no overflow, and no dependence on other keys, so causal attention
    stays causal) and ``exp(|ω_r|² - |x - ω_r|²/2 - max_r)`` for queries (the
    ``|ω_r|²/2`` moved from the keys to the queries leaves every product unchanged;
    the per-query max cancels between numerator and denominator).

    Args:
        x: queries or keys already multiplied by ``scale ** 0.5``.
        projection: ``(M, D)``, the ω_r (from :func:`orthogonal_gaussian`).
        is_query: which side of the product ``x`` is on.
    """
    half_norm = projection.pow(2).sum(dim=-1) / 2  # |ω_r|² / 2: (M,)
    logits = x @ projection.T - x.pow(2).sum(dim=-1, keepdim=True) / 2
    if is_query:
        logits = logits + half_norm
        logits = logits - logits.amax(dim=-1, keepdim=True).detach()
    else:
        logits = logits - half_norm
    return logits.exp()
