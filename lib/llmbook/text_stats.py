"""Measurements of generated text: repetition, surprisal, and error rates with their uncertainty.

Decoding chapters compare settings by what the text they produce looks like. These are the
numbers they use:

- :func:`distinct_ngrams`: the share of distinct n-grams over many texts (their variety);
- :func:`repeated_ngram_share`: how much of a text repeats itself (degeneration into loops);
- :func:`nats_per_token`: the mean surprisal of the sampled tokens under the distribution they
  were drawn from, an estimate of the sampler's entropy per step (its "diversity");
- :func:`rate_with_se`: a rate pooled over documents with a standard error that treats each
  document as one unit, since the statements of one text are not independent of each other;
- :func:`ratio_with_se`: the same pooled ratio for real-valued per-unit sums (e.g. probability
  mass summed over a document's positions, or paired differences), clustered the same way;
- :func:`mean_with_se`: a mean over independent units (e.g. per-question accuracies, paired
  differences) with its standard error;
- :func:`zero_count_upper_bound`: what a rate can still be when none of ``n`` events happened
  (a standard error of 0 says nothing there).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

__all__ = ["distinct_ngrams", "repeated_ngram_count", "repeated_ngram_share", "nats_per_token", "rate_with_se",
           "ratio_with_se", "mean_with_se", "zero_count_upper_bound"]


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")


def _check_tokens(tokens: Sequence[Hashable], name: str) -> None:
    if isinstance(tokens, (str, bytes)) or not isinstance(tokens, Sequence):
        raise ValueError(f"{name} must be a sequence of tokens (ids or words), got {type(tokens).__name__}")


def distinct_ngrams(texts: Sequence[Sequence[Hashable]], n: int = 2) -> float:
    """Distinct-n (Li et al. 2016): distinct ``n``-grams / all ``n``-grams, pooled over ``texts``.

    Each text is a sequence of tokens (ids or words); n-grams never span two texts. 1 when no
    n-gram occurs twice anywhere, small when the texts repeat each other or themselves.
    ``nan`` when no text is long enough to hold an n-gram.
    """
    _check_n(n)
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise ValueError(f"texts must be a sequence of token sequences, got {type(texts).__name__}")
    grams: list[tuple[Hashable, ...]] = []
    for i, tokens in enumerate(texts):
        _check_tokens(tokens, f"texts[{i}]")
        grams += [tuple(tokens[j : j + n]) for j in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else math.nan


def repeated_ngram_count(tokens: Sequence[Hashable], n: int = 4) -> tuple[int, int]:
    """``(repeated, total)``: how many of the ``n``-grams of ``tokens`` already occurred earlier
    in the same sequence, and how many ``n``-grams it has (0 when it is shorter than ``n``).

    The counts pool over texts with :func:`rate_with_se`.
    """
    _check_n(n)
    _check_tokens(tokens, "tokens")
    total = max(len(tokens) - n + 1, 0)
    seen: set[tuple[Hashable, ...]] = set()
    repeated = 0
    for i in range(total):
        gram = tuple(tokens[i : i + n])
        repeated += gram in seen
        seen.add(gram)
    return repeated, total


def repeated_ngram_share(tokens: Sequence[Hashable], n: int = 4) -> float:
    """Share of the ``n``-grams of ``tokens`` that already occurred earlier in the same sequence.

    0 for a text that never repeats an ``n``-gram; close to 1 for a text stuck in a loop (a
    cycle of length L repeats every n-gram after its first L). ``nan`` when the sequence is
    shorter than ``n`` (it has no n-gram to judge).
    """
    repeated, total = repeated_ngram_count(tokens, n)
    return repeated / total if total else math.nan


def nats_per_token(token_probs: Sequence[Sequence[float]]) -> float:
    """Mean of ``-log p`` over every sampled token of every row (``GenerationResult.token_probs``).

    Each ``p`` is the probability the token had under the (processed) distribution it was
    drawn from, so the mean estimates that distribution's entropy per step, in nats.
    """
    if isinstance(token_probs, (str, bytes)) or not isinstance(token_probs, Sequence):
        raise ValueError("token_probs must be a list of lists of probabilities")
    total, count = 0.0, 0
    for row in token_probs:
        for p in row:
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p <= 1.0:
                raise ValueError(f"token_probs must hold probabilities in (0, 1], got {p!r}")
            total -= math.log(p)
            count += 1
    if count == 0:
        raise ValueError("token_probs holds no tokens")
    return total / count


def rate_with_se(hits: Sequence[int], totals: Sequence[int]) -> tuple[float, float]:
    """Pooled rate ``sum(hits) / sum(totals)`` over units (e.g. texts) and its standard error.

    The error treats each unit as one independent draw (the ratio estimator's linearised,
    cluster-robust variance, with the m / (m - 1) small-sample factor), so correlated events
    within one text widen it as they should. Units with ``totals == 0`` count as units with
    nothing to judge. Returns ``(nan, nan)`` when nothing was judged at all and
    ``(rate, nan)`` with a single unit.
    """
    if isinstance(hits, (str, bytes)) or isinstance(totals, (str, bytes)):
        raise ValueError("hits and totals must be sequences of counts")
    if len(hits) != len(totals):
        raise ValueError(f"hits and totals must have the same length, got {len(hits)} and {len(totals)}")
    for name, values in (("hits", hits), ("totals", totals)):
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values):
            raise ValueError(f"{name} must hold non-negative ints")
    if any(h > t for h, t in zip(hits, totals)):
        raise ValueError("every hits[i] must be <= totals[i]")
    return ratio_with_se(list(hits), list(totals))


def ratio_with_se(sums: Sequence[float], counts: Sequence[int | float]) -> tuple[float, float]:
    """Pooled mean ``sum(sums) / sum(counts)`` over units, with :func:`rate_with_se`'s standard error.

    ``sums[i]`` is a real-valued total over the ``counts[i]`` items of unit ``i`` (e.g. the
    probability mass a sampler removes, summed over the positions of one document); the
    values may be negative (paired differences). The error is the same linearised,
    cluster-robust one as :func:`rate_with_se` (each unit one independent draw, m / (m - 1)
    factor), which it equals for integer hits. ``(nan, nan)`` when every count is 0,
    ``(mean, nan)`` with a single unit.
    """
    if isinstance(sums, (str, bytes)) or isinstance(counts, (str, bytes)):
        raise ValueError("sums and counts must be sequences of numbers")
    if len(sums) != len(counts):
        raise ValueError(f"sums and counts must have the same length, got {len(sums)} and {len(counts)}")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in sums):
        raise ValueError("sums must hold finite numbers")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 for v in counts):
        raise ValueError("counts must hold finite non-negative numbers")
    m, total = len(counts), float(sum(counts))
    if total == 0:
        return math.nan, math.nan
    mean = sum(sums) / total
    if m < 2:
        return mean, math.nan
    residuals = sum((s - mean * c) ** 2 for s, c in zip(sums, counts))
    return mean, math.sqrt(residuals * m / (m - 1)) / total


def mean_with_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean of ``values`` (one per independent unit) and its standard error ``s / sqrt(m)``.

    ``s`` is the sample standard deviation (m - 1 in the denominator). For per-unit rates with
    equal totals this equals :func:`rate_with_se`; unlike a rate, the values may be negative
    (paired differences). ``(mean, nan)`` for a single value.
    """
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
        raise ValueError("values must be a non-empty sequence of numbers")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in values):
        raise ValueError("values must hold finite numbers")
    m = len(values)
    mean = sum(values) / m
    if m == 1:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (m - 1) / m)


def zero_count_upper_bound(n: int, confidence: float = 0.95) -> float:
    """Exact one-sided upper bound on a rate when 0 of ``n`` independent events happened.

    The largest rate p with ``(1 - p) ** n >= 1 - confidence``: ``1 - (1 - confidence) ** (1 / n)``
    (Clopper-Pearson; about 3 / n at 95%, the "rule of three").
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise ValueError(f"confidence must be a number in (0, 1), got {confidence!r}")
    return 1.0 - (1.0 - confidence) ** (1.0 / n)


def chi_square(counts: Sequence[float], probs: Sequence[float], min_expected: float = 5.0) -> tuple[float, int, float]:
    """Pearson's chi-square goodness-of-fit test of observed ``counts`` against the distribution
    ``probs`` (same length; ``probs`` sums to 1). Bins expected to hold fewer than ``min_expected``
    draws are pooled into one (into the smallest kept bin when the pool itself is too small), as
    the test's large-sample approximation needs. Returns (statistic, degrees of freedom, p-value).
    Accepts lists or tensors. Raises ``ValueError`` for mismatched lengths or fewer than 2 bins left."""
    import torch  # local: the rest of this module is plain Python

    counts_t = torch.as_tensor(counts, dtype=torch.float64).flatten()
    probs_t = torch.as_tensor(probs, dtype=torch.float64).flatten()
    if counts_t.shape != probs_t.shape:
        raise ValueError(f"counts and probs must have the same length, got {counts_t.numel()} and {probs_t.numel()}")
    expected = probs_t * counts_t.sum()
    keep = expected >= min_expected
    observed = torch.cat([counts_t[keep], counts_t[~keep].sum()[None]])
    expected = torch.cat([expected[keep], expected[~keep].sum()[None]])
    if expected[-1] < min_expected:  # too little left over for a bin of its own
        observed, expected = observed[:-1], expected[:-1]
        if len(expected):
            observed[expected.argmin()] += counts_t[~keep].sum()
    if len(expected) < 2:
        raise ValueError("fewer than 2 bins are expected to hold enough draws: the test has nothing to compare")
    stat = float(((observed - expected) ** 2 / expected).sum())
    df = len(expected) - 1
    p = float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), torch.tensor(stat / 2)))
    return stat, df, p
