"""Turning logits into a next-token distribution, and drawing from it.

Temperature rescales logits before the softmax: p_i = exp(z_i / T) / sum_j exp(z_j / T).
Top-k, top-p (nucleus) and min-p then cut the tail of that distribution. Each step is a
*logits processor*, a callable ``logits (..., vocab) -> logits`` that sets filtered-out
entries to -inf, so they compose: ``apply_processors(logits, build_processors(...))``.
:func:`probabilities` and :func:`sample` run the same chain (fused, with identical results).

Numerics. Every function computes exactly what transformers' warpers compute (bit for bit,
tests/test_sampling_parity.py) as long as that is finite. Where ``logits / temperature``
would overflow its dtype (a tiny temperature; float16 saturates at 65504) the affected row
is shifted by its maximum before dividing (:func:`_divide_by_temperature`), which gives the
same distribution without inf - inf = NaN. So for finite logits of any float dtype and any
temperature the API accepts, no function returns NaN.

Drawing. :func:`sample` (and :func:`draw`) pick a token by inverse CDF: one uniform number
per row, located in the cumulative sum of the row's probabilities taken in vocabulary order.
A row's token therefore depends only on its own distribution and its own uniform, never on
the other rows of the batch; with one generator per row (:func:`row_generators`) each row
draws what it would draw alone. Chapter 1 (temperature) and chapter 2 (top-p) explain the
mechanisms.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
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
    # One reduction answers all three questions: amax propagates NaN, and a row's max is
    # +inf if any entry is, -inf only if all are.
    row_max = logits.amax(dim=-1)
    if torch.isnan(row_max).any():
        raise ValueError("logits contain NaN")
    if (row_max == float("inf")).any():
        raise ValueError("logits contain +inf")
    if (row_max == float("-inf")).any():
        raise ValueError("every logit of a row is -inf: no token can be sampled")
    return logits


def _wide_dtype(device: torch.device) -> torch.dtype:
    """The widest float dtype ``device`` computes in: float64, except on Apple's MPS (float32 only)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _divide_by_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``logits / temperature`` as a new tensor, with each row's maximum guaranteed finite.

    The ordinary path is the plain division of transformers' ``TemperatureLogitsWarper``, so
    results stay bit-identical to it. Only a row whose maximum that division leaves non-finite
    takes the stable path: +inf when a small temperature pushes a logit past the dtype's range
    (float16 logit 40000 at T = 0.5), -inf when all its finite logits are negative and
    overflow, NaN when the temperature itself rounds to 0 or inf in the dtype (0 / 0,
    -inf / inf). That row is computed as ``(z - max z) / T`` in float64 (exact T, no
    overflow in the subtraction), then cast back: the top logit becomes exactly 0 and every
    other one a finite negative number, or -inf when the gap leaves the dtype's range; its
    softmax is then exactly 0 anyway, since a gap that large underflows ``exp``. Softmax does
    not change under a shift, so this is the same distribution computed without overflow.
    """
    x = logits / temperature
    if temperature == 1.0:
        return x
    # Over/underflow or NaN in a row shows in its maximum (amax propagates NaN).
    broken = ~torch.isfinite(x.amax(dim=-1))
    if bool(broken.any()):
        rows = logits[broken].to(_wide_dtype(logits.device))
        gap = rows - rows.amax(dim=-1, keepdim=True)  # 0 at the max, < 0 elsewhere, -inf where masked
        # Divide only finite negative gaps: 0 / T and -inf / T could give NaN if T rounds to 0 or inf.
        stable = torch.where(torch.isfinite(gap) & (gap < 0), gap / temperature, gap)
        x[broken] = stable.to(x.dtype)
    return x


def temperature_softmax(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Softmax of ``logits / temperature`` over the last dimension.

    ``temperature == 0`` returns the T -> 0 limit: all mass on the largest logit (shared
    equally when several tie), which is what greedy decoding samples from. A positive
    temperature so small that ``logits / temperature`` overflows reaches that limit too,
    without NaN (the row is shifted by its maximum first, see :func:`_divide_by_temperature`).
    """
    temperature = _check_temperature(temperature)
    logits = _check_logits(logits)
    if temperature == 0.0:
        is_max = logits == logits.max(dim=-1, keepdim=True).values
        return is_max.to(logits.dtype) / is_max.sum(dim=-1, keepdim=True).to(logits.dtype)
    return torch.softmax(_divide_by_temperature(logits, temperature), dim=-1)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats over the last dimension, with 0 * log 0 taken as 0."""
    if not isinstance(probs, torch.Tensor) or not probs.is_floating_point():
        raise ValueError("probs must be a floating-point torch.Tensor")
    if (probs < 0).any() or torch.isnan(probs).any():
        raise ValueError("probs must be non-negative and contain no NaN")
    # Adding 0.0 turns the -0.0 of a certain outcome into 0.0, so printed tables read "0.000".
    return -(torch.special.xlogy(probs, probs)).sum(dim=-1) + 0.0


def total_variation(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Total-variation distance 1/2 sum |p - q| over the last dimension: the largest difference
    in probability the two distributions give any set of outcomes (0 = equal, 1 = disjoint)."""
    for name, probs in (("p", p), ("q", q)):
        if not isinstance(probs, torch.Tensor) or not probs.is_floating_point():
            raise ValueError(f"{name} must be a floating-point torch.Tensor")
        if (probs < 0).any() or torch.isnan(probs).any():
            raise ValueError(f"{name} must be non-negative and contain no NaN")
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same shape, got {tuple(p.shape)} and {tuple(q.shape)}")
    return 0.5 * (p - q).abs().sum(dim=-1)


# --------------------------------------------------------------------------------------
# Argument checks shared by the processors and the sampling functions.
# --------------------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    # bool is an int subclass, but top_k=True is a bug, not a request for one token.
    return isinstance(value, int) and not isinstance(value, bool)


def _check_top_k(top_k: int) -> int:
    if not _is_int(top_k) or top_k < 1:
        raise ValueError(f"top_k must be an int >= 1 (or None to disable), got {top_k!r}")
    return top_k


def _check_top_p(top_p: float) -> float:
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not (0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be a number in (0, 1] (or None to disable), got {top_p!r}")
    return float(top_p)


def _check_min_p(min_p: float) -> float:
    if isinstance(min_p, bool) or not isinstance(min_p, (int, float)) or not (0.0 <= min_p <= 1.0):
        raise ValueError(f"min_p must be a number in [0, 1] (or None to disable), got {min_p!r}")
    return float(min_p)


def _check_min_tokens_to_keep(min_tokens_to_keep: int) -> int:
    if not _is_int(min_tokens_to_keep) or min_tokens_to_keep < 1:
        raise ValueError(f"min_tokens_to_keep must be an int >= 1, got {min_tokens_to_keep!r}")
    return min_tokens_to_keep


NEG_INF = float("-inf")


# --------------------------------------------------------------------------------------
# Logits processors: callables logits (..., vocab) -> logits with filtered entries at -inf.
# Each one computes exactly what the transformers warper of the same name computes (same
# operations in the same order and dtype), so the kept token sets and the resulting
# probabilities are bit-identical; tests/test_sampling_parity.py checks this.
# --------------------------------------------------------------------------------------


class Temperature:
    """Divide the logits by ``temperature`` (> 0 flattens or sharpens the softmax).

    ``temperature == 0`` is the T -> 0 limit used for greedy decoding: every logit except
    the argmax (the first one on ties, like ``torch.argmax``) becomes -inf.

    Bit-identical to transformers' ``TemperatureLogitsWarper`` wherever that is finite. Where
    the division would overflow (float16, or a tiny temperature), the row is shifted by its
    maximum first and comes out with maximum 0: the same softmax, where transformers' row
    would hold inf and its softmax NaN.
    """

    def __init__(self, temperature: float) -> None:
        self.temperature = _check_temperature(temperature)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        _check_logits(logits)
        if self.temperature == 0.0:
            keep = logits.argmax(dim=-1, keepdim=True)
            return torch.full_like(logits, NEG_INF).scatter_(-1, keep, logits.gather(-1, keep))
        # A division, not a multiplication by 1/T: the two differ in the last bit.
        return _divide_by_temperature(logits, self.temperature)

    def __repr__(self) -> str:
        return f"Temperature({self.temperature})"


class TopK:
    """Keep the ``top_k`` largest logits (at least ``min_tokens_to_keep``), mask the rest.

    Every token tied with the k-th largest logit is kept too, so a row can keep more than
    k tokens (transformers does the same). A ``top_k`` larger than the vocabulary keeps all.
    """

    def __init__(self, top_k: int, min_tokens_to_keep: int = 1) -> None:
        self.top_k = _check_top_k(top_k)
        self.min_tokens_to_keep = _check_min_tokens_to_keep(min_tokens_to_keep)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        _check_logits(logits)
        k = min(max(self.top_k, self.min_tokens_to_keep), logits.shape[-1])
        kth_largest = torch.topk(logits, k, dim=-1).values[..., -1:]
        return logits.masked_fill(logits < kth_largest, NEG_INF)

    def __repr__(self) -> str:
        return f"TopK({self.top_k}, min_tokens_to_keep={self.min_tokens_to_keep})"


class TopP:
    """Nucleus filtering: keep the smallest set of most likely tokens whose mass reaches ``top_p``.

    Computed from the bottom, as transformers does: sort ascending, and drop every token
    whose cumulative probability (float cumsum in the logits' dtype) is ``<= 1 - top_p``.
    The ``<=`` means a token whose removal would leave exactly ``top_p`` of the mass is
    dropped. Ties at the boundary are split by the order ``torch.sort`` happens to give
    equal values, so two tokens with the same logit can end up on different sides.
    With ``top_p == 1`` the threshold is 0: only tokens whose probability underflows to 0
    (and -inf ones) are dropped.
    """

    def __init__(self, top_p: float, min_tokens_to_keep: int = 1) -> None:
        self.top_p = _check_top_p(top_p)
        self.min_tokens_to_keep = _check_min_tokens_to_keep(min_tokens_to_keep)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        _check_logits(logits)
        sorted_logits, sorted_indices = torch.sort(logits, dim=-1, descending=False)
        cumulative_probs = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        sorted_to_remove = cumulative_probs <= (1 - self.top_p)
        sorted_to_remove[..., -self.min_tokens_to_keep :] = False  # the most likely always stay
        # Sorted position i holds token sorted_indices[i]: send each decision back to its token.
        to_remove = sorted_to_remove.scatter(-1, sorted_indices, sorted_to_remove)
        return logits.masked_fill(to_remove, NEG_INF)

    def __repr__(self) -> str:
        return f"TopP({self.top_p}, min_tokens_to_keep={self.min_tokens_to_keep})"


class MinP:
    """Keep tokens whose probability is at least ``min_p`` times the top token's probability.

    The cut adapts to confidence: a peaked distribution keeps few tokens, a flat one many.
    The ``min_tokens_to_keep`` most likely tokens always stay (``torch.topk`` picks among ties).
    """

    def __init__(self, min_p: float, min_tokens_to_keep: int = 1) -> None:
        self.min_p = _check_min_p(min_p)
        self.min_tokens_to_keep = _check_min_tokens_to_keep(min_tokens_to_keep)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        _check_logits(logits)
        probs = logits.softmax(dim=-1)
        threshold = self.min_p * probs.amax(dim=-1, keepdim=True)
        to_remove = probs < threshold
        k = min(self.min_tokens_to_keep, logits.shape[-1])
        to_remove.scatter_(-1, torch.topk(probs, k, dim=-1).indices, False)
        return logits.masked_fill(to_remove, NEG_INF)

    def __repr__(self) -> str:
        return f"MinP({self.min_p}, min_tokens_to_keep={self.min_tokens_to_keep})"


Processor = Callable[[torch.Tensor], torch.Tensor]


def build_processors(
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
) -> list[Processor]:
    """The processors for these settings, in transformers' order: temperature, top-k, top-p, min-p.

    Like ``transformers`` ``generate``, a no-op setting adds nothing: temperature 1,
    top_p 1, and None for any filter.
    """
    temperature = _check_temperature(temperature)
    processors: list[Processor] = []
    if temperature != 1.0:
        processors.append(Temperature(temperature))
    if top_k is not None:
        processors.append(TopK(top_k))
    if top_p is not None and _check_top_p(top_p) < 1.0:
        processors.append(TopP(top_p))
    if min_p is not None:
        processors.append(MinP(min_p))
    return processors


def apply_processors(logits: torch.Tensor, processors: Sequence[Processor]) -> torch.Tensor:
    """Run ``processors`` left to right over ``logits`` (the input is not modified)."""
    _check_logits(logits)
    for processor in processors:
        if not callable(processor):
            raise ValueError(f"processors must be callables logits -> logits, got {processor!r}")
        logits = processor(logits)
    return logits


# --------------------------------------------------------------------------------------
# The fused path used by probabilities() and sample(). It returns the same masked logits as
# apply_processors(logits, build_processors(...)), bit for bit, but does less work:
#  - one owned copy of the logits, masked in place;
#  - top-p needs the sorted *values* only (they are unique whatever the sort order of ties),
#    so after top-k it assembles them from torch.topk's k values instead of sorting the
#    vocabulary, and otherwise sorts values with numpy's SIMD sort on CPU (~10x torch.sort);
#  - the kept set is then "logit >= first kept value", a comparison instead of a scatter;
#    only when equal logits straddle the cut does it need torch.sort's order of ties, and
#    then it falls back to TopP itself so the split is exactly transformers'.
# Every shortcut is taken for the whole batch, but each gives every row the same values it
# would get alone, so a row's distribution never depends on the other rows.
# --------------------------------------------------------------------------------------


def _sorted_values(x: torch.Tensor) -> torch.Tensor:
    """``torch.sort(x).values`` computed the fastest way available on x's device."""
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        return torch.from_numpy(np.sort(x.detach().numpy(), axis=-1))
    return torch.sort(x, dim=-1).values


def _filter(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    min_p: float | None,
) -> torch.Tensor:
    """The masked logits (a new tensor): temperature, then top-k, top-p and min-p."""
    vocab = logits.shape[-1]
    x = _divide_by_temperature(logits, temperature) if temperature != 1.0 else logits.clone()
    topk_values = None  # the survivors' logits sorted descending, if top-k kept exactly k
    if top_k is not None and top_k < vocab:
        topk_values = torch.topk(x, top_k, dim=-1).values
        to_remove = x < topk_values[..., -1:]
        x.masked_fill_(to_remove, NEG_INF)
        if bool((to_remove.sum(dim=-1) != vocab - top_k).any()):
            # Ties with the k-th value keep more than k tokens: topk's list is incomplete.
            topk_values = None
    if top_p is not None and top_p < 1.0:
        if topk_values is not None:
            # After top-k the ascending sort is (vocab - k) times -inf, then the k values.
            sorted_logits = torch.full_like(x, NEG_INF)
            sorted_logits[..., vocab - top_k :] = topk_values.flip(-1)
        else:
            sorted_logits = _sorted_values(x)
        cumulative_probs = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        n_removed = (cumulative_probs <= (1 - top_p)).sum(dim=-1, keepdim=True)
        n_removed.clamp_(max=vocab - 1)  # min_tokens_to_keep = 1: the top token stays
        first_kept = sorted_logits.gather(-1, n_removed)
        last_removed = sorted_logits.gather(-1, (n_removed - 1).clamp(min=0))
        straddles = (n_removed > 0) & (last_removed == first_kept) & (first_kept > NEG_INF)
        if bool(straddles.any()):
            x = TopP(top_p)(x)
        else:
            x.masked_fill_(x < first_kept, NEG_INF)
    if min_p is not None:
        probs = x.softmax(dim=-1)
        # min_tokens_to_keep = 1 needs no topk: the top token never falls below min_p * itself.
        x.masked_fill_(probs < min_p * probs.amax(dim=-1, keepdim=True), NEG_INF)
    return x


def _check_settings(
    temperature: float, top_k: int | None, top_p: float | None, min_p: float | None
) -> tuple[float, int | None, float | None, float | None]:
    return (
        _check_temperature(temperature),
        None if top_k is None else _check_top_k(top_k),
        None if top_p is None else _check_top_p(top_p),
        None if min_p is None else _check_min_p(min_p),
    )


def _greedy_one_hot(logits: torch.Tensor) -> torch.Tensor:
    probs = torch.zeros_like(logits)
    return probs.scatter_(-1, logits.argmax(dim=-1, keepdim=True), 1.0)


def probabilities(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
) -> torch.Tensor:
    """The distribution that :func:`sample` draws from, shape and dtype of ``logits``.

    Equal to ``softmax(apply_processors(logits, build_processors(...)))``, and bit-identical
    to transformers' warpers followed by a softmax wherever those are finite. Temperature 0
    gives the one-hot greedy distribution on the argmax (first index on ties). For finite
    logits the result is never NaN, in any dtype at any temperature (see
    :func:`_divide_by_temperature`). Each row is computed independently of the others.
    """
    temperature, top_k, top_p, min_p = _check_settings(temperature, top_k, top_p, min_p)
    _check_logits(logits)
    if temperature == 0.0:
        return _greedy_one_hot(logits)
    return _filter(logits, temperature, top_k, top_p, min_p).softmax(dim=-1)


# --------------------------------------------------------------------------------------
# Drawing: one uniform number per row, located in the row's cumulative distribution.
# --------------------------------------------------------------------------------------

Generators = torch.Generator | Sequence[torch.Generator] | None

_SEED_MAX = 2**64 - 1  # torch.Generator.manual_seed accepts [0, 2**64 - 1]
_MASK64 = 2**64 - 1


def _splitmix64(state: int) -> int:
    """SplitMix64's output function (Steele, Lea & Flood 2014): a bijection on 64-bit ints
    whose outputs for consecutive states look independent."""
    z = state & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= _SEED_MAX:
        raise ValueError(f"seed must be an integer in [0, 2**64 - 1], got {seed!r}")
    return seed


def row_seeds(seed: int, rows: int) -> list[int]:
    """The seed of each row's generator when a batch of ``rows`` is sampled with one int ``seed``.

    Row 0 gets ``seed`` itself, so a prompt alone and the first row of any batch draw the same
    tokens. Row i >= 1 gets the i-th output of SplitMix64 started at ``seed`` (its top 32 bits):
    not ``seed + i``, because then the runs seed=0 and seed=1 of a batch would share all but
    one row's random numbers, and so would consecutive batches seeded ``seed + b``. The top 32
    bits because torch's CPU generator only uses the low 32 bits of a seed (mt19937), and
    SplitMix64's bits are all well mixed. ``seed=[row_seeds(s, n)[i]]`` reproduces row i alone.
    """
    _check_seed(seed)
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
        raise ValueError(f"rows must be an integer >= 0, got {rows!r}")
    golden = 0x9E3779B97F4A7C15  # SplitMix64's increment: 2**64 / golden ratio, odd
    return [seed if i == 0 else _splitmix64(seed + i * golden) >> 32 for i in range(rows)]


def row_generators(seed: int | Sequence[int], rows: int) -> list[torch.Generator]:
    """One seeded CPU ``torch.Generator`` per row, for ``sample(..., generator=...)``.

    ``seed`` is an int (seeds from :func:`row_seeds`: rows differ, row 0 uses ``seed``) or a
    list of ``rows`` ints, one per row, used as they are. The generators live on the CPU on
    purpose: a row draws one number per step, so moving it costs nothing, and the same seed
    then gives the same numbers on every device.
    """
    if isinstance(seed, (list, tuple)):
        if len(seed) != rows:
            raise ValueError(f"seed must have one entry per row ({rows}), got {len(seed)}")
        seeds = [_check_seed(s) for s in seed]
    else:
        seeds = row_seeds(_check_seed(seed), rows)
    return [torch.Generator().manual_seed(s) for s in seeds]


def _check_generator(generator: object, rows: int) -> Generators:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, (list, tuple)):
        if len(generator) != rows:
            raise ValueError(f"generator must be one torch.Generator or a list of one per row ({rows}), "
                             f"got a list of {len(generator)}")
        for g in generator:
            if not isinstance(g, torch.Generator):
                raise ValueError(f"generator list entries must be torch.Generator, got {type(g).__name__}")
        return generator
    raise ValueError(f"generator must be a torch.Generator, a list of them (one per row) or None, "
                     f"got {type(generator).__name__}")


def _uniforms(rows: int, generator: Generators, device: torch.device) -> torch.Tensor:
    """One uniform number in [0, 1) per row, on ``device`` in its wide dtype.

    A list of generators gives row i the next number of ``generator[i]``; a single generator
    gives the rows its next ``rows`` numbers in order; None uses torch's global CPU generator.
    Numbers are drawn on each generator's own device and then moved.
    """
    wide = _wide_dtype(device)
    if generator is None:
        u = torch.rand(rows, dtype=torch.float64)
    elif isinstance(generator, torch.Generator):
        u = torch.rand(rows, generator=generator, dtype=_wide_dtype(generator.device), device=generator.device)
    else:
        parts = [torch.rand(1, generator=g, dtype=_wide_dtype(g.device), device=g.device) for g in generator]
        if all(g.device.type == "cpu" for g in generator):
            # Join on the CPU first: one transfer per step instead of one per row.
            u = torch.cat(parts) if parts else torch.empty(0, dtype=torch.float64)
        else:
            u = torch.cat([x.to(device, wide) for x in parts])
    return u.to(device=device, dtype=wide)


def _draw(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse CDF: for each row of ``probs`` (rows, vocab), the first token whose cumulative
    probability exceeds ``u * total``. The cumulative sum runs in vocabulary order over the
    whole row, so the token depends on the row's probabilities and ``u`` alone (on the CPU
    bit for bit: torch's CPU cumsum is a sequential loop); it always has probability > 0."""
    cdf = probs.cumsum(dim=-1, dtype=u.dtype)
    total = cdf[:, -1:]
    # u < 1, but u * total can round up to total; stay strictly below so the search lands
    # on a step of the CDF, that is on a token with positive probability.
    target = torch.minimum(u[:, None] * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, target, right=True)[:, 0]


def draw(probs: torch.Tensor, *, generator: Generators = None) -> torch.Tensor:
    """Draw one token id per row of ``probs`` (..., vocab), a (not necessarily normalized)
    distribution such as :func:`probabilities` returns; a LongTensor of shape ``probs.shape[:-1]``.

    Inverse CDF from one uniform number per row: ``generator`` is None (torch's global CPU
    generator), one ``torch.Generator`` (its next numbers, one per row in row order: the
    batch reproduces, but a row's draw depends on its position), or a list with one generator
    per row (row i uses only ``generator[i]``, so it draws what it would alone). Generators
    may live on any device.
    """
    if not isinstance(probs, torch.Tensor) or not probs.is_floating_point():
        raise ValueError("probs must be a floating-point torch.Tensor")
    if probs.ndim == 0 or probs.shape[-1] == 0:
        raise ValueError(f"probs must have a non-empty last (vocabulary) dimension, got shape {tuple(probs.shape)}")
    if not bool(torch.isfinite(probs).all()) or bool((probs < 0).any()):
        raise ValueError("probs must be finite and non-negative")
    flat = probs.reshape(-1, probs.shape[-1])
    if bool((flat.sum(dim=-1) <= 0).any()):
        raise ValueError("every row of probs needs a positive total probability")
    generator = _check_generator(generator, flat.shape[0])
    u = _uniforms(flat.shape[0], generator, probs.device)
    return _draw(flat, u).reshape(probs.shape[:-1])


def sample(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    generator: Generators = None,
) -> torch.Tensor:
    """Draw one token id per row of ``logits`` (..., vocab); returns a LongTensor of shape ``logits.shape[:-1]``.

    Temperature 0 is greedy (argmax, first index on ties), as in the OpenAI API, and uses no
    random number. Otherwise ``draw(probabilities(logits, ...), generator=generator)``: an
    inverse-CDF draw from exactly the distribution :func:`probabilities` returns. ``generator``
    is None, one ``torch.Generator`` (one number per row, in row order) or a list of one per
    row (see :func:`draw`); with a list, e.g. ``row_generators(seed, rows)``, each row's token
    depends only on its own logits and its own generator.
    """
    temperature, top_k, top_p, min_p = _check_settings(temperature, top_k, top_p, min_p)
    _check_logits(logits)
    vocab = logits.shape[-1]
    rows = logits.numel() // vocab
    generator = _check_generator(generator, rows)
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    probs = _filter(logits.reshape(rows, vocab), temperature, top_k, top_p, min_p).softmax(dim=-1)
    return _draw(probs, _uniforms(rows, generator, logits.device)).reshape(logits.shape[:-1])


def nucleus_size(logits: torch.Tensor, top_p: float, temperature: float = 1.0) -> torch.Tensor:
    """How many tokens top-p keeps in each row (LongTensor of shape ``logits.shape[:-1]``)."""
    top_p = _check_top_p(top_p)
    temperature = _check_temperature(temperature)
    _check_logits(logits)
    if temperature == 0.0:
        return torch.ones(logits.shape[:-1], dtype=torch.long, device=logits.device)
    x = _divide_by_temperature(logits, temperature) if temperature != 1.0 else logits
    return (TopP(top_p)(x) > NEG_INF).sum(dim=-1)
