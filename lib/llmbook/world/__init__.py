"""TinyWorld: a fictional world whose truth is known, and text about it with exact probabilities.

>>> world = World.generate(0)
>>> doc = world.sample("qa", seed=1)[0]      # text, exact logprob, meta
>>> world.true_next_word_distribution(f"{world.kb.people[0]} lives in")  # {"<town>": 1.0}
>>> check_statements(doc.text, world.kb)     # parses? true?
"""

from .checkers import (
    ArithmeticCheck,
    CardCheck,
    QACheck,
    ReactCheck,
    RetrievalCheck,
    StatementCheck,
    check_arithmetic,
    check_card,
    check_qa,
    check_react,
    check_retrieval,
    check_statement,
    check_statements,
    claim_is_true,
    document_is_correct,
    grammatical_error_rate,
    hallucination_rate,
    split_statements,
)
from .documents import (
    FAMILIES,
    ArithmeticConfig,
    CardConfig,
    Document,
    FactConfig,
    QAConfig,
    ReactConfig,
    RetrievalConfig,
    StoryConfig,
    document_logprob,
    enumerate_documents,
    render_fact,
    sample_document,
    sample_documents,
    scratchpad_lines,
    true_next_token_distribution,
    true_next_word_distribution,
)
from .entities import ATTRIBUTES, Item, KnowledgeBase, Person, Town, generate_knowledge_base
from .grammar import ALL_TEMPLATES, Claim, Template, parse_sentence
from .program import END, Chooser, Sampler, continuation_masses, enumerate_paths, next_word_distribution, text_logprob
from .splits import (
    DEFAULT_MIXTURE,
    SUITES,
    Corpus,
    EvalItem,
    FamilyStats,
    Splits,
    build_corpus,
    default_splits,
    evaluation_suites,
    make_splits,
)
from .tinyworld import World
from .tools import calculator, lookup

__all__ = [
    "ALL_TEMPLATES", "ATTRIBUTES", "ArithmeticCheck", "ArithmeticConfig", "CardCheck", "CardConfig", "Chooser",
    "Claim", "Corpus", "DEFAULT_MIXTURE", "Document", "END", "EvalItem", "FAMILIES", "FactConfig", "FamilyStats",
    "Item", "KnowledgeBase", "Person", "QACheck", "QAConfig", "ReactCheck", "ReactConfig", "RetrievalCheck",
    "RetrievalConfig", "SUITES", "Sampler", "Splits", "StatementCheck", "StoryConfig", "Template", "Town", "World",
    "build_corpus", "calculator", "check_arithmetic", "check_card", "check_qa", "check_react", "check_retrieval",
    "check_statement", "check_statements", "claim_is_true", "continuation_masses", "default_splits", "document_is_correct",
    "document_logprob", "enumerate_documents", "enumerate_paths", "evaluation_suites", "generate_knowledge_base",
    "grammatical_error_rate", "hallucination_rate", "lookup", "make_splits", "next_word_distribution",
    "parse_sentence", "render_fact", "sample_document", "sample_documents", "scratchpad_lines", "split_statements",
    "text_logprob", "true_next_token_distribution", "true_next_word_distribution",
]
