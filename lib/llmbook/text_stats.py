"""Measurements of generated text: repetition, surprisal, and error rates with their uncertainty.

Decoding chapters compare settings by what the text they produce looks like. These are the
numbers they use:

- :func:`distinct_ngrams`: the share of distinct n-grams over many texts (their variety);
- :func:`repeated_ngram_share`: how much of a text repeats itself (degeneration into loops);
- :func:`nats_per_token`: the mean surprisal of the sampled tokens under the distribution they
  were drawn from, an estimate of the sampler's entropy per step (its "diversity");
- :func:`rate_with_se`: a rate pooled over documents with a standard error that treats each
  document as one unit, since the statements of one text are not independent of each other.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

__all__ = ["distinct_ngrams", "repeated_ngram_share", "nats_per_token", "rate_with_se"]


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


def repeated_ngram_share(tokens: Sequence[Hashable], n: int = 4) -> float:
    """Share of the ``n``-grams of ``tokens`` that already occurred earlier in the same sequence.

    0 for a text that never repeats an ``n``-gram; close to 1 for a text stuck in a loop (a
    cycle of length L repeats every n-gram after its first L). ``nan`` when the sequence is
    shorter than ``n`` (it has no n-gram to judge).
    """
    _check_n(n)
    _check_tokens(tokens, "tokens")
    total = len(tokens) - n + 1
    if total <= 0:
        return math.nan
    seen: set[tuple[Hashable, ...]] = set()
    repeated = 0
    for i in range(total):
        gram = tuple(tokens[i : i + n])
        repeated += gram in seen
        seen.add(gram)
    return repeated / total


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
    m, judged = len(totals), sum(totals)
    if judged == 0:
        return math.nan, math.nan
    rate = sum(hits) / judged
    if m < 2:
        return rate, math.nan
    residuals = sum((h - rate * t) ** 2 for h, t in zip(hits, totals))
    return rate, math.sqrt(residuals * m / (m - 1)) / judged
