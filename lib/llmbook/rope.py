"""Rotary position embedding (RoPE) as plain functions, for looking at it from the outside.

The model applies RoPE inside attention (:class:`llmbook.model.RotaryEmbedding`); this module
exposes the same mechanism, built from the same functions, without a second implementation:

- :func:`frequencies`: the spectrum theta_i = base^(-2i/d), i < d/2 (Su et al. 2021, eq. 15);
- :func:`rotate`: rotate vectors of shape (..., T, d) to their positions, pair (x_i, x_{i+d/2}) by
  the angle position * theta_i, as the model and Hugging Face's Llama do;
- :func:`attention_logit`: q_m . k_n after rotation, which depends on n - m only (the
  relative-position property);
- :func:`decay_bound`: RoFormer's long-term-decay bound on that logit as a function of the
  distance (Su et al. 2021, section 3.4.3).

Reference: J. Su, Y. Lu, S. Pan, A. Murtadha, B. Wen, Y. Liu, "RoFormer: Enhanced Transformer
with Rotary Position Embedding", arXiv:2104.09864.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from llmbook.model import apply_rotary, default_inverse_frequencies, rotary_cos_sin

__all__ = ["frequencies", "rotate", "attention_logit", "decay_bound"]


def _check_head_dim(head_dim: Any) -> int:
    if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 2 or head_dim % 2:
        raise ValueError(f"head_dim must be an even integer >= 2 (RoPE rotates pairs of dimensions), got {head_dim!r}")
    return head_dim


def _check_base(base: Any) -> float:
    if isinstance(base, bool) or not isinstance(base, (int, float)) or not math.isfinite(base) or base <= 1:
        raise ValueError(f"base must be a finite number > 1 (rope_theta), got {base!r}")
    return float(base)


def frequencies(head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """theta_i = base^(-2i/head_dim) for i = 0 .. head_dim/2 - 1, in radians per position.

    Shape (head_dim/2,), float32, decreasing: pair 0 turns by 1 radian per position, the last pair
    by about 1/base. Raises ValueError for an odd ``head_dim`` or ``base`` <= 1.
    """
    return default_inverse_frequencies(_check_head_dim(head_dim), _check_base(base))


def rotate(x: torch.Tensor, positions: torch.Tensor | Sequence[int], base: float = 10000.0) -> torch.Tensor:
    """Rotate ``x`` (..., T, d) to ``positions`` (T,): pair (x_i, x_{i+d/2}) turns by position * theta_i.

    Computed in float32 and returned in float32, whatever ``x``'s dtype. Raises ValueError when d is
    odd, ``base`` <= 1 or the number of positions differs from T.
    """
    if not isinstance(x, torch.Tensor) or x.ndim < 2:
        raise ValueError(f"x must be a tensor of shape (..., T, d), got {type(x).__name__}"
                         + (f" of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else ""))
    d = _check_head_dim(x.shape[-1])
    pos = torch.as_tensor(positions, dtype=torch.float32, device=x.device).reshape(-1)
    if pos.numel() != x.shape[-2]:
        raise ValueError(f"positions must give one position per row of x: x has T = {x.shape[-2]}, "
                         f"got {pos.numel()} positions")
    if not torch.isfinite(pos).all():
        raise ValueError("positions must be finite")
    cos, sin = rotary_cos_sin(pos, default_inverse_frequencies(d, _check_base(base), x.device))
    return apply_rotary(x.float(), cos, sin)


def attention_logit(q: torch.Tensor, k: torch.Tensor, m: float, n: float, base: float = 10000.0) -> torch.Tensor:
    """<R_m q, R_n k>: the dot product of ``q`` (..., d) at position m and ``k`` (..., d) at position n.

    Equals <q, R_{n-m} k>, a function of n - m alone. Returns shape (...), float32 (divide by sqrt(d)
    for the attention logit proper).
    """
    if not isinstance(q, torch.Tensor) or not isinstance(k, torch.Tensor) or q.shape != k.shape:
        raise ValueError("q and k must be tensors of the same shape (..., d)")
    rq = rotate(q.unsqueeze(-2), [m], base).squeeze(-2)
    rk = rotate(k.unsqueeze(-2), [n], base).squeeze(-2)
    return (rq * rk).sum(-1)


def decay_bound(distances: torch.Tensor | Sequence[float], head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """RoFormer's long-term-decay quantity (1/(d/2)) * sum_{j=1}^{d/2} |S_j| at each distance r.

    S_j = sum_{k=0}^{j-1} exp(i r theta_k). By Abel summation, |<R_m q, R_n k>| is at most
    max_i |h_{i+1} - h_i| * sum_j |S_j| with h_i the complex products of q's and k's pairs
    (Su et al. 2021, section 3.4.3), so this curve, normalized to d/2 pairs, is the factor that
    decays with r = |n - m|. At r = 0 it is (d/2 + 1) / 2. Shape: that of ``distances``, float64.
    """
    d = _check_head_dim(head_dim)
    inv_freq = default_inverse_frequencies(d, _check_base(base)).double()
    r = torch.as_tensor(distances, dtype=torch.float64)
    if not torch.isfinite(r).all():
        raise ValueError("distances must be finite")
    phase = r.reshape(-1, 1) * inv_freq  # (R, d/2)
    partial = torch.cumsum(torch.polar(torch.ones_like(phase), phase), dim=-1)  # S_1 .. S_{d/2}
    return (partial.abs().sum(-1) / (d // 2)).reshape(r.shape)
