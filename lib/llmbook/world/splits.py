"""Who and what the model may see: training, held-out and new-knowledge splits, and eval suites.

- *held-out people* appear only in evaluation (the model cannot know them: what it says
  about them measures hallucination);
- *hidden facts* are single facts about training people never stated in training;
- *new people* (disjoint names) are kept for the fine-tuning chapters ("teach new facts").
``build_corpus`` samples the training corpus from the training view only, and reports
its exact log probability, i.e. the entropy floor a perfect model would reach.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Mapping

from .documents import (
    FAMILIES,
    ArithmeticConfig,
    CardConfig,
    Document,
    FactConfig,
    QAConfig,
    family_program,
    get_family,
    render_fact,
)
from .entities import KnowledgeBase, generate_knowledge_base
from .grammar import QUESTION_TEMPLATES
from .lexicon import check_seed, seeded_rng
from .program import run

HIDDEN_FACT_ATTRIBUTES = ("age", "job", "food")
# The corpus the shipped models were trained on. A knowledge-denser mixture (facts 25%, QA 20%,
# retrieval 5%) with the main preset at lr 2e-3 for 1,400 steps was tried and was worse on every
# measure (0.46 nats/token above the floor, 2% on training-fact questions): see the model card.
DEFAULT_MIXTURE = {"story": 0.30, "fact": 0.15, "qa": 0.15, "card": 0.10, "react": 0.10, "arithmetic": 0.10, "retrieval": 0.10}


@dataclass(frozen=True)
class Splits:
    """The partition of a world's people and facts, and a knowledge-base view for each part."""

    kb: KnowledgeBase  # the whole world: the truth checkers judge against
    train_people: tuple[str, ...]
    heldout_people: tuple[str, ...]
    new_people: tuple[str, ...]
    hidden_facts: frozenset[tuple[str, str]]  # (training person, attribute) never stated in training
    train_kb: KnowledgeBase = field(repr=False)
    heldout_kb: KnowledgeBase = field(repr=False)
    new_kb: KnowledgeBase = field(repr=False)


def _check_fraction(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 0.5:
        raise ValueError(f"{name} must be a number in [0, 0.5), got {value!r}")


def make_splits(kb: KnowledgeBase, seed: int = 0, heldout_fraction: float = 0.1, new_fraction: float = 0.1,
                hidden_fact_fraction: float = 0.1) -> Splits:
    """Partition ``kb``'s people into train / held-out / new, and hide some training facts."""
    if not isinstance(kb, KnowledgeBase):
        raise ValueError(f"kb must be a KnowledgeBase, got {type(kb).__name__}")
    for name, value in (("heldout_fraction", heldout_fraction), ("new_fraction", new_fraction),
                        ("hidden_fact_fraction", hidden_fact_fraction)):
        _check_fraction(name, value)
    rng = seeded_rng(seed, "splits")
    people = list(kb.people)
    rng.shuffle(people)
    n_heldout, n_new = round(heldout_fraction * len(people)), round(new_fraction * len(people))
    heldout = tuple(sorted(people[:n_heldout]))
    new = tuple(sorted(people[n_heldout:n_heldout + n_new]))
    train = tuple(sorted(people[n_heldout + n_new:]))
    if not train:
        raise ValueError("heldout_fraction + new_fraction leave no training people; lower them")
    hidden = frozenset(
        (name, rng.choice(HIDDEN_FACT_ATTRIBUTES))
        for name in sorted(rng.sample(train, round(hidden_fact_fraction * len(train))))
    )
    return Splits(
        kb=kb, train_people=train, heldout_people=heldout, new_people=new, hidden_facts=hidden,
        train_kb=kb.restrict(train, hidden=hidden),
        # Evaluation questions about held-out people may name their (training) friends.
        heldout_kb=kb.restrict(heldout, filter_friends=False),
        new_kb=kb.restrict(new),
    )


@lru_cache(maxsize=4)
def default_splits(seed: int = 0) -> Splits:
    """The book's world (``generate_knowledge_base(seed)``) split with default fractions."""
    return make_splits(generate_knowledge_base(seed), seed=seed)


# -- the training corpus --------------------------------------------------------------------------
@dataclass(frozen=True)
class FamilyStats:
    """Exact log probability of one family's documents in a corpus."""

    n_docs: int
    n_chars: int
    total_logprob: float  # sum of the documents' log P(text | family)

    @property
    def nats_per_doc(self) -> float:
        """Monte Carlo estimate of the family's entropy H(text | family), in nats per document."""
        return -self.total_logprob / self.n_docs if self.n_docs else math.nan

    @property
    def nats_per_char(self) -> float:
        return -self.total_logprob / self.n_chars if self.n_chars else math.nan


@dataclass(frozen=True)
class Corpus:
    documents: list[Document]
    mixture: dict[str, float]
    stats: dict[str, FamilyStats]
    total_logprob: float  # log P(all documents), including the choice of each document's family

    @property
    def nats_per_doc(self) -> float:
        """Estimate of the generator's entropy per document: the loss floor of a perfect model."""
        return -self.total_logprob / len(self.documents) if self.documents else math.nan

    @property
    def nats_per_char(self) -> float:
        chars = sum(len(d.text) for d in self.documents)
        return -self.total_logprob / chars if chars else math.nan


def check_mixture(mixture: Mapping[str, float]) -> dict[str, float]:
    """Normalised mixture weights; ValueError for unknown families or bad weights."""
    if not isinstance(mixture, Mapping) or not mixture:
        raise ValueError(f"mixture must be a non-empty mapping of family -> weight, got {mixture!r}")
    for name, weight in mixture.items():
        get_family(name)  # ValueError listing the known families
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"mixture weight of {name!r} must be a finite number >= 0, got {weight!r}")
    total = sum(mixture.values())
    if total <= 0:
        raise ValueError("mixture weights must not all be 0")
    return {name: mixture[name] / total for name in sorted(mixture) if mixture[name] > 0}


def build_corpus(seed: int, n_docs: int, mixture: Mapping[str, float] | None = None, *,
                 splits: Splits | None = None, configs: Mapping[str, Any] | None = None) -> Corpus:
    """``n_docs`` training documents drawn from the training view of ``splits`` (default world).

    Each document's family is drawn from ``mixture``; its text from that family's program.
    """
    check_seed(seed)
    if isinstance(n_docs, bool) or not isinstance(n_docs, int) or not 0 <= n_docs <= 10**8:
        raise ValueError(f"n_docs must be an int in [0, 100000000], got {n_docs!r}")
    weights = check_mixture(DEFAULT_MIXTURE if mixture is None else mixture)
    splits = default_splits() if splits is None else splits
    configs = dict(configs or {})
    for name in configs:
        get_family(name)
    programs = {name: family_program(name, splits.train_kb, configs.get(name)) for name in weights}
    rng = seeded_rng(seed, "corpus")
    names = list(weights)
    documents, total = [], 0.0
    for _ in range(n_docs):
        family = rng.choices(names, weights=[weights[n] for n in names])[0]
        text, logprob, meta = run(programs[family], rng)
        documents.append(Document(family, text, logprob, meta))
        # The family is part of the generator's choice; texts of different families never coincide.
        total += math.log(weights[family]) + logprob
    stats = {
        name: FamilyStats(
            n_docs=sum(1 for d in documents if d.family == name),
            n_chars=sum(len(d.text) for d in documents if d.family == name),
            total_logprob=sum(d.logprob for d in documents if d.family == name),
        )
        for name in names
    }
    return Corpus(documents, weights, stats, total)


# -- evaluation suites -----------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalItem:
    """A prompt and its expected continuation (None where a checker grades free text)."""

    suite: str
    family: str
    prompt: str
    expected: str | None
    meta: dict = field(compare=False)


SUITES = ("qa_seen", "qa_heldout_people", "qa_hidden_facts", "qa_new_knowledge", "fact_completion", "card",
          "react", "arithmetic_direct", "arithmetic_scratchpad", "retrieval", "story")


def _sample(suite: str, family: str, kb: KnowledgeBase, seed: int, n: int, config: Any = None) -> list[Document]:
    rng = seeded_rng(seed, f"eval/{suite}")
    program = family_program(family, kb, config)
    return [Document(family, *run(program, rng)) for _ in range(n)]


def evaluation_suites(splits: Splits, seed: int = 0, n_per_suite: int = 50) -> dict[str, list[EvalItem]]:
    """Fixed, seeded evaluation prompts per task. Grade them with :mod:`.checkers`."""
    if not isinstance(splits, Splits):
        raise ValueError(f"splits must be a Splits, got {type(splits).__name__}")
    if isinstance(n_per_suite, bool) or not isinstance(n_per_suite, int) or not 1 <= n_per_suite <= 100_000:
        raise ValueError(f"n_per_suite must be an int in [1, 100000], got {n_per_suite!r}")
    n, one_pair = n_per_suite, QAConfig(max_pairs=1)
    suites: dict[str, list[EvalItem]] = {}

    def qa_suite(suite: str, kb: KnowledgeBase) -> list[EvalItem]:
        items = []
        for doc in _sample(suite, "qa", kb, seed, n, one_pair):
            pair = doc.meta["pairs"][0]
            items.append(EvalItem(suite, "qa", pair["prompt"], pair["answer"], pair))
        return items

    suites["qa_seen"] = qa_suite("qa_seen", splits.train_kb)
    suites["qa_heldout_people"] = qa_suite("qa_heldout_people", splits.heldout_kb)
    hidden = sorted(splits.hidden_facts)
    rng = seeded_rng(seed, "eval/qa_hidden_facts")
    suites["qa_hidden_facts"] = [
        EvalItem("qa_hidden_facts", "qa",
                 f"Question: {QUESTION_TEMPLATES[attribute].render(person=name)}\nAnswer:",
                 render_fact(splits.kb, name, attribute), {"subject": name, "kind": attribute})
        for name, attribute in rng.sample(hidden, min(n, len(hidden)))
    ]
    suites["qa_new_knowledge"] = qa_suite("qa_new_knowledge", splits.new_kb)
    suites["fact_completion"] = []
    for doc in _sample("fact_completion", "fact", splits.train_kb, seed, n, FactConfig(max_facts=1)):
        line = doc.meta["lines"][0]
        cut = line["value_start"]
        suites["fact_completion"].append(
            EvalItem("fact_completion", "fact", line["text"][:cut].rstrip(), line["text"][cut:], line))
    suites["card"] = []
    for doc in _sample("card", "card", splits.train_kb, seed, n, CardConfig(town_weight=0.0)):
        prompt = doc.text[: doc.text.index(", ") + 2]  # '{"name": "Mira", '
        suites["card"].append(EvalItem("card", "card", prompt, doc.text, doc.meta))
    suites["react"] = [EvalItem("react", "react", d.meta["prompt"], d.meta["answer"], d.meta)
                       for d in _sample("react", "react", splits.train_kb, seed, n)]
    for form, p in (("direct", 0.0), ("scratchpad", 1.0)):
        suite = f"arithmetic_{form}"
        suites[suite] = [EvalItem(suite, "arithmetic", d.meta["prompt"], d.meta["answer"], d.meta)
                         for d in _sample(suite, "arithmetic", splits.kb, seed, n, ArithmeticConfig(scratchpad_probability=p))]
    suites["retrieval"] = [EvalItem("retrieval", "retrieval", d.meta["prompt"], d.meta["answer"], d.meta)
                           for d in _sample("retrieval", "retrieval", splits.train_kb, seed, n)]
    suites["story"] = [EvalItem("story", "story", d.meta["sentences"][0], None, d.meta)
                       for d in _sample("story", "story", splits.train_kb, seed, n)]
    assert tuple(suites) == SUITES
    return suites
