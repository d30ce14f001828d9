"""``World``: one object for a generated world, its documents and its checks."""

from __future__ import annotations

from typing import Any

from .checkers import StatementCheck, check_statements
from .documents import Document, document_logprob, sample_documents, true_next_word_distribution
from .entities import KnowledgeBase, generate_knowledge_base
from .lexicon import check_seed
from .splits import Splits, make_splits


class World:
    """A seeded fictional world: ``World.generate(0)`` is the book's TinyWorld."""

    def __init__(self, seed: int, kb: KnowledgeBase) -> None:
        self.seed = check_seed(seed)
        if not isinstance(kb, KnowledgeBase):
            raise ValueError(f"kb must be a KnowledgeBase, got {type(kb).__name__}")
        self.kb = kb

    @classmethod
    def generate(cls, seed: int, n_people: int = 400, n_towns: int = 32, n_items: int = 30) -> World:
        """Same seed, same world, on any machine. ValueError for a non-int seed or bad sizes."""
        return cls(seed, generate_knowledge_base(seed, n_people=n_people, n_towns=n_towns, n_items=n_items))

    def sample(self, family: str, seed: int, n: int = 1, kb: KnowledgeBase | None = None, config: Any = None) -> list[Document]:
        """``n`` documents of ``family`` about ``kb`` (default: the whole world)."""
        return sample_documents(family, self.kb if kb is None else kb, seed, n, config)

    def true_next_word_distribution(self, prefix: str, family: str = "fact", kb: KnowledgeBase | None = None,
                                    config: Any = None) -> dict[str, float]:
        """Exact next-word distribution of the generator: ``"Mira lives in"`` -> ``{"Tolbury": 1.0}``."""
        return true_next_word_distribution(prefix, family, self.kb if kb is None else kb, config)

    def document_logprob(self, text: str, family: str, kb: KnowledgeBase | None = None, config: Any = None) -> float:
        """Exact log P(text) under ``family``."""
        return document_logprob(text, family, self.kb if kb is None else kb, config)

    def check_statements(self, text: str) -> list[StatementCheck]:
        """Parse and fact-check each statement of ``text`` against the whole world."""
        return check_statements(text, self.kb)

    def splits(self, seed: int = 0, **fractions: float) -> Splits:
        return make_splits(self.kb, seed=seed, **fractions)

    def __repr__(self) -> str:
        return f"World(seed={self.seed}, {self.kb!r})"
