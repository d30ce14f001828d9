"""Splits keep held-out and new knowledge out of training; the corpus reports its exact entropy."""

from __future__ import annotations

import math
import re

import pytest

from llmbook.world import (
    SUITES,
    World,
    build_corpus,
    check_arithmetic,
    check_card,
    check_qa,
    check_react,
    check_retrieval,
    check_statements,
    evaluation_suites,
    make_splits,
)


@pytest.fixture(scope="module")
def splits():
    return World.generate(0).splits(seed=0)


@pytest.fixture(scope="module")
def corpus(splits):
    return build_corpus(0, 1500, splits=splits)


def test_people_are_partitioned_and_names_are_disjoint(splits):
    train, heldout, new = map(set, (splits.train_people, splits.heldout_people, splits.new_people))
    assert not train & heldout and not train & new and not heldout & new
    assert train | heldout | new == set(splits.kb.people)
    assert len(heldout) == 40 and len(new) == 40 and len(splits.hidden_facts) == 32
    assert all(name in train for name, _ in splits.hidden_facts)
    assert set(splits.new_kb.people) == new and all(set(splits.new_kb.get(p, "friends")) <= new for p in new)


def test_training_corpus_never_mentions_held_out_or_new_people(splits, corpus):
    words = set()
    for doc in corpus.documents:
        words |= set(re.findall(r"[A-Z][a-z]+", doc.text))
    assert not words & set(splits.heldout_people) and not words & set(splits.new_people)
    assert len(words & set(splits.train_people)) > 200


def test_training_corpus_never_states_a_hidden_fact(splits, corpus):
    claimed = {(c.entity, c.attribute) for doc in corpus.documents for c in doc.meta["claims"]}
    pet = {(p, "pet_species") for p, a in splits.hidden_facts if a == "pet_name"}
    assert not claimed & (set(splits.hidden_facts) | pet)
    assert len(claimed) > 500
    # And the claims are true in the whole world.
    for doc in corpus.documents[:300]:
        if doc.family in ("story", "fact"):
            assert all(c.true is not False and c.parses for c in check_statements(doc.text, splits.kb))


def test_corpus_stats_are_exact_sums(corpus):
    assert sum(s.n_docs for s in corpus.stats.values()) == len(corpus.documents)
    assert set(corpus.stats) == set(corpus.mixture)
    for family, stats in corpus.stats.items():
        docs = [d for d in corpus.documents if d.family == family]
        assert stats.total_logprob == pytest.approx(sum(d.logprob for d in docs))
        assert stats.nats_per_doc > 0 and stats.nats_per_char == pytest.approx(-stats.total_logprob / sum(len(d.text) for d in docs))
    mixture_term = sum(math.log(corpus.mixture[d.family]) for d in corpus.documents)
    assert corpus.total_logprob == pytest.approx(mixture_term + sum(d.logprob for d in corpus.documents))
    assert 0 < corpus.nats_per_char < 1


def test_corpus_is_deterministic_and_mixture_is_respected(splits):
    a = build_corpus(3, 50, splits=splits)
    b = build_corpus(3, 50, splits=splits)
    assert [d.text for d in a.documents] == [d.text for d in b.documents]
    only = build_corpus(3, 20, mixture={"arithmetic": 1.0}, splits=splits)
    assert {d.family for d in only.documents} == {"arithmetic"}


@pytest.mark.parametrize("mixture, match", [
    ({"poem": 1.0}, r"family must be one of \['arithmetic', 'card'"),
    ({"story": -1.0}, "weight of 'story'"),
    ({"story": 0.0}, "not all be 0"),
    ({}, "non-empty mapping"),
])
def test_bad_mixtures_are_rejected(splits, mixture, match):
    with pytest.raises(ValueError, match=match):
        build_corpus(0, 10, mixture=mixture, splits=splits)


def test_bad_arguments_are_rejected(splits):
    with pytest.raises(ValueError, match="n_docs"):
        build_corpus(0, -1, splits=splits)
    with pytest.raises(ValueError, match="seed"):
        build_corpus(0.5, 1, splits=splits)
    with pytest.raises(ValueError, match="heldout_fraction"):
        make_splits(splits.kb, heldout_fraction=0.7)


def test_evaluation_suites_are_seeded_and_their_expected_answers_check(splits):
    suites = evaluation_suites(splits, seed=0, n_per_suite=15)
    assert tuple(suites) == SUITES and all(len(items) == 15 for items in suites.values())
    again = evaluation_suites(splits, seed=0, n_per_suite=15)
    assert [i.prompt for i in suites["qa_seen"]] == [i.prompt for i in again["qa_seen"]]
    kb = splits.kb
    for suite in ("qa_seen", "qa_heldout_people", "qa_hidden_facts", "qa_new_knowledge"):
        for item in suites[suite]:
            assert item.prompt.endswith("\nAnswer:") and check_qa(f"{item.prompt} {item.expected}", kb).correct
    assert {i.meta["subject"] for i in suites["qa_heldout_people"] if i.meta["kind"] not in ("region", "price")} <= set(splits.heldout_people)
    assert {i.meta["subject"] for i in suites["qa_hidden_facts"]} <= set(splits.train_people)
    for item in suites["fact_completion"]:
        assert check_statements(f"{item.prompt} {item.expected}", kb)[0].true
    # A card lists *all* friends, so it is judged against the view it was written from.
    assert all(check_card(i.expected, splits.train_kb).true and i.expected.startswith(i.prompt) for i in suites["card"])
    for item in suites["arithmetic_direct"]:
        assert check_arithmetic(f"{item.prompt} {item.expected}").answer_correct
    for item in suites["arithmetic_scratchpad"]:
        worked = item.prompt + "".join(step + "\n" for step in item.meta["steps"]) + f"Answer: {item.expected}"
        assert check_arithmetic(worked).answer_correct and check_arithmetic(worked).steps_canonical
    assert all(not i.meta["scratchpad"] for i in suites["arithmetic_direct"]) and all(i.meta["scratchpad"] for i in suites["arithmetic_scratchpad"])
    assert all(check_retrieval(f"{i.prompt} {i.expected}").answer_correct for i in suites["retrieval"])
    assert all(check_react(i.prompt + "Thought: x\nAction: calculator[1]\nObservation: 1\nAnswer: " + i.expected, kb).answer_correct
               for i in suites["react"])
    assert all(i.expected is None and check_statements(i.prompt, kb)[0].true for i in suites["story"])
