"""Checkers pass every generated document and catch each kind of perturbation."""

from __future__ import annotations

import json
import math

import pytest

from llmbook.world import (
    FAMILIES,
    World,
    check_arithmetic,
    check_card,
    check_qa,
    check_react,
    check_retrieval,
    check_statements,
    document_is_correct,
    grammatical_error_rate,
    hallucination_rate,
    render_fact,
    scratchpad_lines,
    split_statements,
)
from llmbook.world.grammar import matching_templates


@pytest.fixture(scope="module")
def world() -> World:
    return World.generate(0)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_generated_document_checks_as_correct(world, family):
    for doc in world.sample(family, seed=21, n=60):
        assert document_is_correct(doc.text, family, world.kb), doc.text


@pytest.mark.parametrize("family", ["story", "fact", "qa"])
def test_generated_statements_parse_under_exactly_one_template_and_are_true(world, family):
    for doc in world.sample(family, seed=22, n=60):
        checks = check_statements(doc.text, world.kb)
        assert all(c.parses and c.true is not False for c in checks)
        assert all(len(matching_templates(c.text)) == 1 for c in checks)
        assert hallucination_rate(checks) in (0.0,) or math.isnan(hallucination_rate(checks))
        assert grammatical_error_rate(checks) == 0.0


def test_swapped_town_parses_but_is_false_and_garbled_words_do_not_parse(world):
    kb = world.kb
    name = kb.people[0]
    town = kb.get(name, "town")
    other = next(t for t in kb.towns if t != town)
    text = f"{name} lives in {other}. {render_fact(kb, name, 'job')} {name} livs in {town}. {name} lives in banana."
    checks = check_statements(text, kb)
    assert [(c.parses, c.true) for c in checks] == [(True, False), (True, True), (False, None), (False, None)]
    assert checks[0].false_claims[0].value == other
    assert hallucination_rate(checks) == 0.5
    assert grammatical_error_rate(checks) == 0.5


def test_unknown_people_and_wrong_ages_and_friends_are_false(world):
    kb = world.kb
    name = kb.people[1]
    age = kb.get(name, "age")
    stranger = next(p for p in kb.people if p != name and p not in kb.get(name, "friends"))
    text = (f"Zorp lives in {kb.towns[0]}. Last year, {name} turned {age - 1}. Last year, {name} turned {age}. "
            f"{name} is friends with {stranger}. The end. It was a good day.")
    assert [c.true for c in check_statements(text, kb)] == [False, True, False, False, None, None]


def test_split_statements_removes_labels_and_splits_sentences():
    assert split_statements("Question: Where does Mira live?\nAnswer: Mira lives in Tolbury. The end.") == [
        "Where does Mira live?", "Mira lives in Tolbury.", "The end."]
    with pytest.raises(ValueError, match="text must be a str"):
        split_statements(None)
    assert math.isnan(hallucination_rate([])) and math.isnan(grammatical_error_rate([]))


def test_qa_checker_grades_answers(world):
    kb = world.kb
    name = kb.people[2]
    friend = kb.get(name, "friends")[0]
    question = f"Question: Who is a friend of {name}?\nAnswer:"
    assert check_qa(f"{question} {name} is friends with {friend}.", kb).correct
    wrong = next(p for p in kb.people if p != name and p not in kb.get(name, "friends"))
    result = check_qa(f"{question} {name} is friends with {wrong}.", kb)
    assert result.answer_parses and not result.correct
    other = kb.people[3]
    off_topic = check_qa(f"{question} {other} is friends with {kb.get(other, 'friends')[0]}.", kb)
    assert off_topic.answer_parses and not off_topic.correct  # true, but not an answer to the question
    assert not check_qa(f"{question} I do not know.", kb).answer_parses
    assert not check_qa("Question: What is love?\nAnswer: Yes.", kb).question_parses


def test_card_checker_catches_json_schema_and_fact_errors(world):
    kb = world.kb
    doc = world.sample("card", seed=3, n=10)
    text = next(d.text for d in doc if d.meta["kind"] == "person")
    card = json.loads(text)
    assert check_card(text, kb).true is True
    assert not check_card(text[:-1], kb).valid_json
    reordered = dict(reversed(list(card.items())))
    assert check_card(json.dumps(reordered), kb).schema_ok is False
    missing = {k: v for k, v in card.items() if k != "job"}
    assert check_card(json.dumps(missing), kb).schema_ok is False
    as_string = dict(card, age=str(card["age"]))
    assert check_card(json.dumps(as_string), kb).schema_ok is False
    older = dict(card, age=card["age"] + 1)
    result = check_card(json.dumps(older), kb)
    assert result.schema_ok and result.true is False and "age" in result.errors[0]
    fewer_friends = dict(card, friends=card["friends"][:-1])
    assert check_card(json.dumps(fewer_friends), kb).true is False


def test_react_checker_reruns_tools_and_grades_answers(world):
    kb = world.kb
    docs = world.sample("react", seed=8, n=40)
    price = next(d.text for d in docs if d.meta["task"] == "price")
    assert check_react(price, kb) == check_react(price, kb) and check_react(price, kb).answer_correct
    lines = price.split("\n")
    bad_observation = "\n".join(line if not line.startswith("Observation") else "Observation: 7" for line in lines)
    result = check_react(bad_observation, kb)
    assert result.well_formed and not result.observations_correct
    missing_observation = "\n".join(line for line in lines if not line.startswith("Observation"))
    assert not check_react(missing_observation, kb).well_formed
    bad_tool = price.replace("lookup[", "search[")
    assert not check_react(bad_tool, kb).well_formed
    wrong_answer = "\n".join(lines[:-1] + ["Answer: 2 lamps cost 1 coins."])
    assert not check_react(wrong_answer, kb).answer_correct
    lookup_doc = next(d for d in docs if d.meta["task"] == "lookup")
    assert check_react(lookup_doc.text, kb).answer_correct


def test_arithmetic_checker_grades_answer_and_each_step():
    text = "Compute 47 * 36 step by step.\n47 * 6 = 282\n47 * 30 = 1410\n282 + 1410 = 1692\nAnswer: 1692"
    assert check_arithmetic(text).answer_correct and check_arithmetic(text).steps_correct
    assert not check_arithmetic(text).steps_canonical  # right, but not the digit-by-digit steps
    canonical = "\n".join(["Compute 47 * 36 step by step.", *scratchpad_lines(47, "*", 36), "Answer: 1692"])
    assert check_arithmetic(canonical).steps_canonical and check_arithmetic(canonical).steps_correct
    bad_digit = canonical.replace("4 * 6 + 4 = 28, write 8, carry 2", "4 * 6 + 4 = 28, write 8, carry 1")
    assert not check_arithmetic(bad_digit).steps_correct and "carry 1" in check_arithmetic(bad_digit).errors[0]
    wrong_step = text.replace("47 * 30 = 1410", "47 * 30 = 1400")
    result = check_arithmetic(wrong_step)
    assert result.answer_correct and not result.steps_correct and "1400" in result.errors[0]
    assert not check_arithmetic(text.replace("Answer: 1692", "Answer: 1691")).answer_correct
    addition = "Compute 478 + 365 step by step.\n8 + 5 + 0 = 13, write 3, carry 1\n7 + 6 + 1 = 14, write 4, carry 1\n4 + 3 + 1 = 8, write 8, carry 0\nAnswer: 843"
    assert check_arithmetic(addition).steps_canonical
    assert not check_arithmetic(addition.replace("write 4, carry 1", "write 4, carry 0")).steps_correct
    assert check_arithmetic("Compute 2 + 2.\nAnswer: 4").steps_correct is None
    assert not check_arithmetic("Compute two plus two.\nAnswer: 4").parses


def test_retrieval_checker_uses_the_records_in_context(world):
    doc = world.sample("retrieval", seed=4)[0]
    result = check_retrieval(doc.text)
    assert result.answer_correct and result.answer_index == doc.meta["answer_index"]
    assert doc.text[doc.meta["answer_offset"]:].startswith(doc.meta["answer"])
    wrong = doc.meta["prompt"] + " " + next(v for v in ("Nowhere", "42") if v != doc.meta["answer"])
    assert not check_retrieval(wrong).answer_correct
    with pytest.raises(ValueError, match="family must be one of"):
        document_is_correct(doc.text, "poem", world.kb)
