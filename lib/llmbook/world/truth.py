"""A model's next-token distributions next to the world's true ones, position by position.

TinyWorld knows, for every prefix of a document, the exact distribution of the next token
(:func:`~llmbook.world.documents.true_next_token_distribution`). This module lines those
truths up with a model's logits over whole documents, so chapters can measure calibration:
how far the model at temperature ``T`` is from the truth (the KL divergence), and whether
its probabilities mean what they say.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from llmbook.model import CausalLM
from llmbook.sampling import temperature_softmax
from llmbook.text_stats import ratio_with_se
from llmbook.tokenizer import Tokenizer

from .documents import FAMILIES, Document, true_next_token_distribution
from .entities import KnowledgeBase

__all__ = ["TruthPosition", "truth_positions", "document_logits", "position_logits", "true_support", "kl_from_truth",
           "mean_kl_by_temperature", "kl_by_temperature", "document_mean_with_se"]


@dataclass(frozen=True)
class TruthPosition:
    """One next-token prediction with a known answer: after ``prefix`` (``position`` tokens of
    document ``doc``), the true distribution ``truth`` (token id -> probability)."""

    doc: int
    position: int
    prefix: str
    truth: dict[int, float]
    #: False where another document family could also have written ``prefix`` (every
    #: document's first token; a QA pair and a ReAct trace share their opening words).
    #: There the truth is this document's family's, which the model cannot know yet: the
    #: corpus's true next token mixes the families, so a fair score leaves these out.
    family_known: bool = True

    @property
    def entropy(self) -> float:
        """Entropy of the true next token, in nats (0 where the world leaves no choice)."""
        return -sum(p * math.log(p) for p in self.truth.values() if p > 0)


def truth_positions(documents: Sequence[Document], tokenizer: Tokenizer, kb: KnowledgeBase) -> list[TruthPosition]:
    """Every token position of every document (and its end) with the true next-token distribution.

    Each position says whether its prefix already rules out every other document family
    (``family_known``); scores against the truth should use only those that do.

    ``kb`` is the view the documents were generated from (e.g. ``splits.train_kb``). The truth
    is conditioned on the prefix's tokens (see ``true_next_token_distribution``); a position
    with no continuation that keeps those tokens would be left out (none in the world's documents:
    a test checks every position is covered).
    """
    if not isinstance(tokenizer, Tokenizer):
        raise ValueError(f"tokenizer must be a llmbook Tokenizer, got {type(tokenizer).__name__}")
    out: list[TruthPosition] = []
    for d, doc in enumerate(documents):
        if not isinstance(doc, Document):
            raise ValueError(f"documents must hold llmbook.world.Document objects, got {type(doc).__name__} at {d}")
        ids = tokenizer.encode(doc.text)
        # Families that could still have written the prefix; a longer prefix never brings
        # one back, so each is tested only until it is ruled out.
        rivals = [f for f in FAMILIES if f != doc.family]
        for position in range(len(ids) + 1):
            prefix = tokenizer.decode(ids[:position])
            rivals = [f for f in rivals if _admits(prefix, f, kb, tokenizer)]
            try:
                truth = true_next_token_distribution(prefix, doc.family, kb, tokenizer)
            except ValueError:
                continue
            out.append(TruthPosition(d, position, prefix, truth, family_known=not rivals))
    return out


def _admits(prefix: str, family: str, kb: KnowledgeBase, tokenizer: Tokenizer) -> bool:
    """Whether a document of ``family`` can begin with ``prefix``."""
    try:
        true_next_token_distribution(prefix, family, kb, tokenizer)
    except ValueError:
        return False
    return True


@torch.no_grad()
def document_logits(model: CausalLM, tokenizer: Tokenizer, documents: Sequence[Document]) -> list[torch.Tensor]:
    """Per document, the model's logits before each token and after the last: ``(n_tokens + 1, V)``, float32 on the CPU.

    Row ``i`` is the prediction after ``[BOS] + first i tokens``: it lines up with
    :class:`TruthPosition.position` ``i``.
    """
    out = []
    for doc in documents:
        ids = torch.tensor([tokenizer.encode(doc.text, add_bos=True)], device=model.device)
        out.append(model(ids)[0].float().cpu())
    return out


def position_logits(positions: Sequence[TruthPosition], logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """The model's logits at each of ``positions``, stacked: ``(len(positions), V)``.

    ``logits`` is what :func:`document_logits` returned for the documents the positions came from.
    """
    if not positions:
        raise ValueError("positions must not be empty")
    rows = []
    for p in positions:
        if not 0 <= p.doc < len(logits) or not 0 <= p.position < len(logits[p.doc]):
            raise ValueError(f"logits has no row for document {p.doc}, position {p.position}: "
                             "pass the document_logits of the documents the positions came from")
        rows.append(logits[p.doc][p.position])
    return torch.stack(rows)


def true_support(positions: Sequence[TruthPosition], vocab_size: int) -> torch.Tensor:
    """Boolean ``(len(positions), vocab_size)``: True where the world gives the token a probability > 0.

    A model's probability outside this mask is the chance of writing a token the world never
    would there: a false fact, a broken sentence, a malformed record.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise ValueError(f"vocab_size must be an int >= 1, got {vocab_size!r}")
    mask = torch.zeros(len(positions), vocab_size, dtype=torch.bool)
    for i, p in enumerate(positions):
        tokens = [t for t, prob in p.truth.items() if prob > 0]
        if any(not 0 <= t < vocab_size for t in tokens):
            raise ValueError(f"position {i} has a true token outside [0, {vocab_size - 1}]: vocab_size is too small")
        mask[i, tokens] = True
    return mask


def kl_from_truth(truth: dict[int, float], logits: torch.Tensor, temperature: float) -> float:
    """KL(truth || model at ``temperature``) in nats; inf where the model gives a true token probability 0 (T = 0)."""
    q = temperature_softmax(logits, temperature)
    kl = 0.0
    for token, p in truth.items():
        if p > 0:
            qt = float(q[token])
            if qt <= 0:
                return math.inf
            kl += p * math.log(p / qt)
    return kl


def mean_kl_by_temperature(positions: Sequence[TruthPosition], logits: Sequence[torch.Tensor],
                           temperatures: Sequence[float]) -> list[float]:
    """Mean KL from the truth over ``positions`` for each temperature (``logits`` from :func:`document_logits`)."""
    if not positions:
        raise ValueError("positions must not be empty")
    return [sum(kl_from_truth(p.truth, logits[p.doc][p.position], t) for p in positions) / len(positions)
            for t in temperatures]


@torch.no_grad()
def kl_by_temperature(positions: Sequence[TruthPosition], logits: Sequence[torch.Tensor],
                      temperatures: Sequence[float]) -> torch.Tensor:
    """KL(truth || model at T) in nats for every position and temperature: ``(len(positions), len(temperatures))``.

    The same numbers as :func:`kl_from_truth` (inf where a true token gets probability 0, as at
    T = 0), computed for all positions at once, so a fine grid of temperatures is cheap.
    """
    if not positions:
        raise ValueError("positions must not be empty")
    if isinstance(temperatures, (str, bytes)) or not isinstance(temperatures, Sequence) or len(temperatures) == 0:
        raise ValueError("temperatures must be a non-empty sequence of numbers")
    stacked = position_logits(positions, logits).double()
    truth = torch.zeros_like(stacked)
    for i, p in enumerate(positions):
        truth[i, list(p.truth)] = torch.tensor(list(p.truth.values()), dtype=truth.dtype)
    support = truth > 0
    log_truth = torch.where(support, truth, torch.ones_like(truth)).log()
    columns = []
    for t in temperatures:
        q = temperature_softmax(stacked, t)
        terms = torch.where(support, truth * (log_truth - q.log()), torch.zeros_like(truth))
        columns.append(terms.sum(dim=-1))
    return torch.stack(columns, dim=1).float()


def document_mean_with_se(values: Sequence[float] | torch.Tensor, positions: Sequence[TruthPosition]) -> tuple[float, float]:
    """Mean of one value per position and its standard error, each *document* counted as one draw.

    Positions of one document are not independent (a model that misjudges a story's town
    misjudges what follows), so the error is the ratio estimator's cluster-robust one (as
    :func:`llmbook.text_stats.rate_with_se`, with sums of values in place of hit counts).
    ``(mean, nan)`` with a single document.
    """
    values = [float(v) for v in values]
    if len(values) != len(positions) or not values:
        raise ValueError(f"values and positions must be non-empty and of equal length, got {len(values)} and "
                         f"{len(positions)}")
    if not all(math.isfinite(v) for v in values):
        raise ValueError("values must be finite")
    sums: dict[int, float] = {}
    counts: dict[int, int] = {}
    for v, p in zip(values, positions):
        sums[p.doc] = sums.get(p.doc, 0.0) + v
        counts[p.doc] = counts.get(p.doc, 0) + 1
    return ratio_with_se(list(sums.values()), list(counts.values()))
