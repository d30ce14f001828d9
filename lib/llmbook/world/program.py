"""Documents as probabilistic programs, and the exact probabilities that follow from that.

A *program* is a function ``program(g) -> meta`` that builds a document by calling
``g.choice(options, weights)`` for every random decision and ``g.emit(text)`` for every
piece of text. Run with a :class:`Sampler`, it draws a document and adds up the log
probability of each decision it took. Run by :func:`enumerate_paths` or
:func:`next_word_distribution`, the same code is *replayed* along every path of decisions
(depth-first, one new decision per replay), so probabilities are computed from the
generator itself rather than from a second description of it that could drift.

Programs emit text as soon as a decision fixes it, which lets the replay drop a whole
subtree the moment its text stops matching a given prefix.
"""

from __future__ import annotations

import math
import random
import re
from typing import Any, Callable, Iterator, Sequence, TypeVar

T = TypeVar("T")
Program = Callable[["Chooser"], dict]
END = "<end>"  # the "next word" when the document ends right after the prefix

# The next word after a prefix: a run of word characters closed by a non-word character,
# or one punctuation character. Whitespace in front of it is skipped.
_WORD_AHEAD = re.compile(r"\s*(?:(\w+)(?=\W)|([^\w\s]))")
_WORD_AT_END = re.compile(r"\s*(\w+)\s*\Z")


def choice_logprobs(n_options: int, weights: Sequence[float] | None) -> list[float]:
    """Natural-log probabilities of a choice among ``n_options`` (uniform without weights)."""
    if n_options < 1:
        raise ValueError("options must not be empty")
    if weights is None:
        return [-math.log(n_options)] * n_options
    if len(weights) != n_options:
        raise ValueError(f"weights must have one entry per option ({n_options}), got {len(weights)}")
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights must be finite, >= 0 and not all 0, got {list(weights)}")
    log_total = math.log(sum(weights))
    return [math.log(w) - log_total if w > 0 else -math.inf for w in weights]


class Chooser:
    """What a program sees: ``choice`` for decisions, ``emit`` for text."""

    def __init__(self) -> None:
        self.logprob = 0.0
        self.text = ""

    def choice(self, options: Sequence[T], weights: Sequence[float] | None = None) -> T:
        raise NotImplementedError

    def emit(self, text: str) -> None:
        self.text += text


class Sampler(Chooser):
    """Draws each decision from ``rng`` and accumulates its log probability."""

    def __init__(self, rng: random.Random) -> None:
        super().__init__()
        self.rng = rng

    def choice(self, options: Sequence[T], weights: Sequence[float] | None = None) -> T:
        logprobs = choice_logprobs(len(options), weights)
        if weights is None:
            index = self.rng.randrange(len(options))
        else:
            index = self.rng.choices(range(len(options)), weights=weights)[0]
        self.logprob += logprobs[index]
        return options[index]


def run(program: Program, rng: random.Random) -> tuple[str, float, dict]:
    """Sample one document: ``(text, exact log probability of the decisions, meta)``."""
    sampler = Sampler(rng)
    meta = program(sampler)
    return sampler.text, sampler.logprob, meta


# -- replay: visiting every path of decisions --------------------------------------------
# Control flow of the replay is signalled with BaseException subclasses so that a program's
# own ``except Exception`` (if it ever had one) cannot swallow them.
class _NewChoice(BaseException):
    def __init__(self, logprobs: list[float]) -> None:
        self.logprobs = logprobs


class _Pruned(BaseException):
    pass


class _NextWord(BaseException):
    def __init__(self, word: str) -> None:
        self.word = word


class _Replay(Chooser):
    """Follows a fixed list of decision indices; stops at the first decision past its end."""

    def __init__(self, path: tuple[int, ...], prefix: str | None) -> None:
        super().__init__()
        self.path, self.depth, self.prefix = path, 0, prefix

    def choice(self, options: Sequence[T], weights: Sequence[float] | None = None) -> T:
        logprobs = choice_logprobs(len(options), weights)
        if self.depth == len(self.path):
            raise _NewChoice(logprobs)
        index = self.path[self.depth]
        self.depth += 1
        self.logprob += logprobs[index]
        return options[index]

    def emit(self, text: str) -> None:
        start = len(self.text)
        self.text += text
        if self.prefix is None:
            return
        prefix, end = self.prefix, len(self.text)
        overlap = min(end, len(prefix))
        if start < overlap and self.text[start:overlap] != prefix[start:overlap]:
            raise _Pruned
        if end > len(prefix):
            match = _WORD_AHEAD.match(self.text, len(prefix))
            if match:
                raise _NextWord(match.group(1) or match.group(2))


def _replay_all(program: Program, prefix: str | None, max_runs: int) -> Iterator[tuple[str, _Replay, Any]]:
    """Yield ("end", replay, meta) for finished paths and ("word", replay, word) for cut ones."""
    stack: list[tuple[int, ...]] = [()]
    runs = 0
    while stack:
        runs += 1
        if runs > max_runs:
            raise ValueError(f"max_runs ({max_runs}) exceeded: the program has too many paths for this prefix")
        path = stack.pop()
        replay = _Replay(path, prefix)
        try:
            meta = program(replay)
        except _NewChoice as new:
            # Reversed so that option 0 is explored first (paths come out in option order).
            stack.extend(path + (i,) for i in reversed(range(len(new.logprobs))) if new.logprobs[i] > -math.inf)
            continue
        except _Pruned:
            continue
        except _NextWord as cut:
            yield "word", replay, cut.word
            continue
        yield "end", replay, meta


def enumerate_paths(program: Program, max_runs: int = 1_000_000) -> list[tuple[str, float]]:
    """Every complete path of a (small) program as ``(text, logprob)``, in option order."""
    return [(replay.text, replay.logprob) for kind, replay, _ in _replay_all(program, None, max_runs)]


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    if top == -math.inf:
        return top
    return top + math.log(sum(math.exp(v - top) for v in values))


def next_word_masses(program: Program, prefix: str, max_runs: int = 1_000_000) -> dict[str, float]:
    """Log of P(text starts with ``prefix`` and continues with word w), for every word w.

    The word :data:`END` collects documents that end with the prefix itself.
    """
    if not isinstance(prefix, str):
        raise ValueError(f"prefix must be a str, got {type(prefix).__name__}")
    masses: dict[str, list[float]] = {}
    for kind, replay, value in _replay_all(program, prefix, max_runs):
        if kind == "word":
            word = value
        elif len(replay.text) < len(prefix):
            continue  # the document ended before the prefix did
        else:
            rest = replay.text[len(prefix):]
            match = _WORD_AT_END.match(rest)
            if match:
                word = match.group(1)
            elif rest.strip():
                word = rest.strip()[0]
            else:
                word = END
        masses.setdefault(word, []).append(replay.logprob)
    return {word: _logsumexp(values) for word, values in masses.items()}


def next_word_distribution(program: Program, prefix: str, max_runs: int = 1_000_000) -> dict[str, float]:
    """The generator's exact distribution of the word after ``prefix`` (sums to 1).

    Raises ValueError when the program cannot produce ``prefix`` at all.
    """
    masses = next_word_masses(program, prefix, max_runs)
    if not masses:
        raise ValueError(f"prefix cannot be produced by this program: {prefix[:80]!r}")
    total = _logsumexp(list(masses.values()))
    dist = {word: math.exp(m - total) for word, m in masses.items()}
    return dict(sorted(dist.items(), key=lambda kv: (-kv[1], kv[0])))


def continuation_masses(program: Program, prefix: str, max_runs: int = 1_000_000) -> list[tuple[str, float]]:
    """``(continuation, log P)`` for every way the text goes on after ``prefix``.

    Each continuation runs from the end of ``prefix`` to at least the end of the next word
    and the character after it (or to the end of the document, ``""`` if it ends right
    there); their probabilities sum to P(prefix). Finer-grained than words: it keeps the
    whitespace and punctuation, which a tokenizer needs to say what the next *token* is.
    """
    if not isinstance(prefix, str):
        raise ValueError(f"prefix must be a str, got {type(prefix).__name__}")
    out = []
    for kind, replay, _ in _replay_all(program, prefix, max_runs):
        if kind == "end" and len(replay.text) < len(prefix):
            continue
        out.append((replay.text[len(prefix):], replay.logprob))
    return out


def text_logprob(program: Program, text: str, max_runs: int = 1_000_000) -> float:
    """Exact log P(text) under the program, summed over every path that yields it (-inf if none)."""
    return next_word_masses(program, text, max_runs).get(END, -math.inf)
