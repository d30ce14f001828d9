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
from llmbook.tokenizer import Tokenizer

from .documents import Document, true_next_token_distribution
from .entities import KnowledgeBase

__all__ = ["TruthPosition", "truth_positions", "document_logits", "kl_from_truth", "mean_kl_by_temperature"]


@dataclass(frozen=True)
class TruthPosition:
    """One next-token prediction with a known answer: after ``prefix`` (``position`` tokens of
    document ``doc``), the true distribution ``truth`` (token id -> probability)."""

    doc: int
    position: int
    prefix: str
    truth: dict[int, float]

    @property
    def entropy(self) -> float:
        """Entropy of the true next token, in nats (0 where the world leaves no choice)."""
        return -sum(p * math.log(p) for p in self.truth.values() if p > 0)


def truth_positions(documents: Sequence[Document], tokenizer: Tokenizer, kb: KnowledgeBase) -> list[TruthPosition]:
    """Every token position of every document (and its end) with the true next-token distribution.

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
        for position in range(len(ids) + 1):
            prefix = tokenizer.decode(ids[:position])
            try:
                truth = true_next_token_distribution(prefix, doc.family, kb, tokenizer)
            except ValueError:
                continue
            out.append(TruthPosition(d, position, prefix, truth))
    return out


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
