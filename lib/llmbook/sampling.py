"""Turning logits into a next-token distribution, and drawing from it.

Temperature rescales logits before the softmax: p_i = exp(z_i / T) / sum_j exp(z_j / T).
"""

from __future__ import annotations

import math

import torch


def _check_temperature(temperature: float) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ValueError(f"temperature must be a number >= 0, got {temperature!r}")
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    return float(temperature)


def _check_logits(logits: torch.Tensor) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise ValueError("logits must be a floating-point torch.Tensor")
    if logits.ndim == 0 or logits.shape[-1] == 0:
        raise ValueError(f"logits must have a non-empty last (vocabulary) dimension, got shape {tuple(logits.shape)}")
    if torch.isnan(logits).any():
        raise ValueError("logits contain NaN")
    if (logits == float("inf")).any():
        raise ValueError("logits contain +inf")
    if (logits == float("-inf")).all(dim=-1).any():
        raise ValueError("every logit of a row is -inf: no token can be sampled")
    return logits


def temperature_softmax(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Softmax of ``logits / temperature`` over the last dimension.

    ``temperature == 0`` returns the T -> 0 limit: all mass on the largest logit (shared
    equally when several tie), which is what greedy decoding samples from.
    """
    temperature = _check_temperature(temperature)
    logits = _check_logits(logits)
    if temperature == 0.0:
        is_max = logits == logits.max(dim=-1, keepdim=True).values
        return is_max.to(logits.dtype) / is_max.sum(dim=-1, keepdim=True).to(logits.dtype)
    return torch.softmax(logits / temperature, dim=-1)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats over the last dimension, with 0 * log 0 taken as 0."""
    if not isinstance(probs, torch.Tensor) or not probs.is_floating_point():
        raise ValueError("probs must be a floating-point torch.Tensor")
    if (probs < 0).any() or torch.isnan(probs).any():
        raise ValueError("probs must be non-negative and contain no NaN")
    # Adding 0.0 turns the -0.0 of a certain outcome into 0.0, so printed tables read "0.000".
    return -(torch.special.xlogy(probs, probs)).sum(dim=-1) + 0.0
