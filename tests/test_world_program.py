"""Exact probabilities: enumeration sums to 1, texts determine paths, replay agrees with sampling."""

from __future__ import annotations

import functools
import math
import random
from collections import defaultdict

import pytest

from llmbook.world import (
    END,
    ArithmeticConfig,
    FactConfig,
    QAConfig,
    ReactConfig,
    RetrievalConfig,
    Sampler,
    StoryConfig,
    World,
    document_logprob,
    enumerate_documents,
    enumerate_paths,
    next_word_distribution,
    sample_documents,
    text_logprob,
    true_next_word_distribution,
)

TINY = World.generate(3, n_people=3, n_towns=2, n_items=2)
SMALL_CONFIGS = {
    "story": StoryConfig(min_body=0, max_body=2, stop_probability=0.3),
    "fact": FactConfig(max_facts=2, continue_probability=0.5),
    "qa": QAConfig(max_pairs=2, continue_probability=0.25),
    "card": None,
    "react": ReactConfig(max_operand=3, max_quantity=3),
    "arithmetic": ArithmeticConfig(max_digits_add=1, max_digits_mul_a=2, max_digits_mul_b=1, scratchpad_probability=0.3),
    "retrieval": RetrievalConfig(n_records=(1, 2)),
}


@functools.lru_cache(maxsize=None)
def tiny_paths(family: str) -> tuple[tuple[str, float], ...]:
    """All paths of a family on the tiny world (enumerated once per test session)."""
    return tuple(enumerate_documents(family, TINY.kb, SMALL_CONFIGS[family]))


@pytest.fixture(scope="module")
def world() -> World:
    return World.generate(0)


@pytest.mark.parametrize("family", sorted(SMALL_CONFIGS))
def test_enumerated_paths_sum_to_one_and_give_distinct_texts(family):
    paths = tiny_paths(family)
    texts = [text for text, _ in paths]
    assert len(paths) >= 5
    assert len(set(texts)) == len(texts), "two choice paths produced the same text: the grammar is ambiguous"
    assert math.fsum(math.exp(lp) for _, lp in paths) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("family", sorted(SMALL_CONFIGS))
def test_sampled_logprob_is_the_enumerated_probability_of_its_text(family):
    table = dict(tiny_paths(family))
    for doc in sample_documents(family, TINY.kb, seed=5, n=20, config=SMALL_CONFIGS[family]):
        assert doc.logprob == pytest.approx(table[doc.text], abs=1e-12)


@pytest.mark.parametrize("family", ["story", "fact", "qa", "card", "react", "arithmetic"])
def test_replayed_text_logprob_matches_sampled_logprob_on_the_full_world(world, family):
    # The replay sums over *every* path that yields the text; equality means no other path does.
    for doc in sample_documents(family, world.kb, seed=11, n=3):
        assert document_logprob(doc.text, family, world.kb) == pytest.approx(doc.logprob, abs=1e-9)
        assert doc.logprob < 0


def test_next_word_distribution_matches_enumeration_on_a_tiny_world():
    config = SMALL_CONFIGS["story"]
    paths = tiny_paths("story")
    rng = random.Random(0)
    for text, _ in rng.sample(paths, 5):
        words = text.split(" ")
        prefix = " ".join(words[: rng.randrange(1, len(words))])
        expected: dict[str, float] = defaultdict(float)
        for other, lp in paths:
            if other.startswith(prefix + " "):
                expected[other[len(prefix) + 1:].split(" ")[0].rstrip(".,")] += math.exp(lp)
            elif other == prefix:
                expected[END] += math.exp(lp)
        total = sum(expected.values())
        got = true_next_word_distribution(prefix, "story", TINY.kb, config)
        assert got.keys() == expected.keys()
        for word, p in expected.items():
            assert got[word] == pytest.approx(p / total, abs=1e-9)


def test_fact_slot_has_one_true_word_and_subject_slot_is_a_mixture(world):
    name = world.kb.people[7]
    town = world.kb.get(name, "town")
    assert world.true_next_word_distribution(f"{name} lives in") == {town: pytest.approx(1.0)}
    dist = world.true_next_word_distribution(f"{name} is")
    n_friends = len(world.kb.get(name, "friends"))
    # "is" starts the age sentence (1 fact) or a friendship sentence (one per friend).
    assert dist[str(world.kb.get(name, "age"))] == pytest.approx(1 / (1 + n_friends))
    assert dist["friends"] == pytest.approx(n_friends / (1 + n_friends))
    qa = world.true_next_word_distribution(f"Question: Where does {name} live?\nAnswer: {name} lives in", "qa")
    assert qa == {town: pytest.approx(1.0)}


def test_story_slot_distribution_is_the_weighted_choice(world):
    dist = world.true_next_word_distribution("Once upon a time, in the town of", "story")
    residents = {t: len(world.kb.get(t, "residents")) for t in world.kb.towns}
    assert set(dist) == {t for t, n in residents.items() if n}
    town = max(residents, key=residents.get)
    assert dist[town] == pytest.approx(residents[town] / len(world.kb.people))
    assert sum(dist.values()) == pytest.approx(1.0)


def test_end_of_document_and_impossible_prefixes(world):
    doc = world.sample("arithmetic", seed=2)[0]
    assert world.true_next_word_distribution(doc.text, "arithmetic") == {END: 1.0}
    with pytest.raises(ValueError, match="cannot be produced"):
        world.true_next_word_distribution("Zzzz lives in", "fact")
    assert world.document_logprob(doc.text + " extra", "arithmetic") == -math.inf


def test_sampler_adds_exact_logprobs():
    def program(g):
        g.emit(g.choice("ab", [1, 3]))
        g.emit(g.choice("xyz"))
        return {}

    sampler = Sampler(random.Random(0))
    program(sampler)
    expected = math.log(0.25 if sampler.text[0] == "a" else 0.75) + math.log(1 / 3)
    assert sampler.logprob == pytest.approx(expected)
    paths = enumerate_paths(program)
    assert [t for t, _ in paths] == ["ax", "ay", "az", "bx", "by", "bz"]
    assert text_logprob(program, "by") == pytest.approx(math.log(0.75 / 3))
    assert next_word_distribution(program, "") == {"ay": pytest.approx(0.25 / 3), "ax": pytest.approx(0.25 / 3),
                                                   "az": pytest.approx(0.25 / 3), "bx": pytest.approx(0.25),
                                                   "by": pytest.approx(0.25), "bz": pytest.approx(0.25)}


def test_sampling_is_deterministic_and_validated(world):
    a = sample_documents("story", world.kb, seed=4, n=3)
    b = sample_documents("story", world.kb, seed=4, n=3)
    assert [d.text for d in a] == [d.text for d in b] and [d.logprob for d in a] == [d.logprob for d in b]
    assert [d.text for d in a] != [d.text for d in sample_documents("story", world.kb, seed=5, n=3)]
    with pytest.raises(ValueError, match="family must be one of"):
        sample_documents("poem", world.kb, seed=0, n=1)
    with pytest.raises(ValueError, match="seed"):
        sample_documents("story", world.kb, seed="0", n=1)
    with pytest.raises(ValueError, match="config for 'story'"):
        sample_documents("story", world.kb, seed=0, n=1, config=FactConfig())
    with pytest.raises(ValueError, match="max_body"):
        StoryConfig(min_body=3, max_body=2)
    with pytest.raises(ValueError, match="weights"):
        enumerate_paths(lambda g: g.choice("ab", [0, 0]))
