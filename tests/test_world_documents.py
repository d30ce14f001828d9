"""What each family writes: formats, meta, real tool outputs, and a small vocabulary."""

from __future__ import annotations

import json
import re

import pytest

from llmbook.world import FAMILIES, RetrievalConfig, World, calculator, lookup, scratchpad_lines


@pytest.fixture(scope="module")
def world() -> World:
    return World.generate(0)


def test_every_family_yields_documents_with_text_logprob_and_claims(world):
    for family in FAMILIES:
        for doc in world.sample(family, seed=1, n=20):
            assert doc.family == family and doc.text and doc.logprob < 0 and isinstance(doc.meta["claims"], list)


def test_story_is_several_sentences_about_one_person(world):
    for doc in world.sample("story", seed=2, n=30):
        assert 4 <= len(doc.meta["sentences"]) <= 7
        assert doc.text == " ".join(doc.meta["sentences"])
        assert {c.entity for c in doc.meta["claims"]} - set(world.kb.items) == {doc.meta["person"]}


def test_card_is_json_with_fixed_key_order(world):
    for doc in world.sample("card", seed=3, n=20):
        card = json.loads(doc.text)
        keys = ["name", "age", "town", "job", "pet", "favourite_food", "friends"] if doc.meta["kind"] == "person" \
            else ["town", "region", "residents"]
        assert list(card) == keys


def test_react_observations_are_real_tool_outputs(world):
    tasks = set()
    for doc in world.sample("react", seed=4, n=60):
        tasks.add(doc.meta["task"])
        lines = doc.text.split("\n")
        for action, observation in zip(lines, lines[1:]):
            if action.startswith("Action: calculator["):
                assert observation == f"Observation: {calculator(action[len('Action: calculator['):-1])}"
            elif action.startswith("Action: lookup["):
                entity, attribute = action[len("Action: lookup["):-1].split(", ")
                assert observation == f"Observation: {lookup(world.kb, entity, attribute)}"
        assert lines[-1] == f"Answer: {doc.meta['answer']}"
    assert tasks == {"lookup", "calculator", "price", "ages"}


def test_arithmetic_has_both_forms_and_long_multiplication(world):
    docs = world.sample("arithmetic", seed=5, n=60)
    assert {d.meta["scratchpad"] for d in docs} == {True, False} and {d.meta["op"] for d in docs} == {"+", "*"}
    assert scratchpad_lines(47, "*", 36) == [
        "7 * 6 + 0 = 42, write 2, carry 4", "4 * 6 + 4 = 28, write 8, carry 2", "47 * 6 = 282",
        "7 * 3 + 0 = 21, write 1, carry 2", "4 * 3 + 2 = 14, write 4, carry 1", "47 * 30 = 1410",
        "2 + 0 + 0 = 2, write 2, carry 0", "8 + 1 + 0 = 9, write 9, carry 0",
        "2 + 4 + 0 = 6, write 6, carry 0", "0 + 1 + 0 = 1, write 1, carry 0", "282 + 1410 = 1692",
    ]
    assert scratchpad_lines(9, "*", 7) == ["9 * 7 + 0 = 63, write 3, carry 6", "9 * 7 = 63"]
    assert scratchpad_lines(95, "+", 7)[-1] == "9 + 0 + 1 = 10, write 0, carry 1"
    with pytest.raises(ValueError, match="op must be"):
        scratchpad_lines(1, "-", 2)


def test_retrieval_records_the_answer_position(world):
    for doc in world.sample("retrieval", seed=6, n=20, config=RetrievalConfig(n_records=(10, 20))):
        meta = doc.meta
        assert meta["n_records"] in (10, 20) and len(set(meta["names"])) == meta["n_records"]
        line = f"{meta['answer_index'] + 1}. {meta['names'][meta['answer_index']]}: {meta['answer']}\n"
        assert doc.text[meta["answer_offset"] - len(line) + len(meta["answer"]) + 1:].startswith(line)
        assert doc.text == f"{meta['prompt']} {meta['answer']}"


def test_vocabulary_beyond_names_and_numbers_is_small(world):
    words = set()
    for family in FAMILIES:
        for doc in world.sample(family, seed=7, n=150):
            words |= set(re.findall(r"\b[a-z][a-z_]*\b", doc.text))
    assert 120 < len(words) < 300


def test_true_next_token_distribution_maps_words_to_first_tokens_and_sums_to_one():
    from llmbook.hub import load
    from llmbook.world import default_splits, true_next_token_distribution, true_next_word_distribution

    _, tok = load("tinyworld-draft", device="cpu")
    splits = default_splits(0)
    kb, name = splits.train_kb, splits.train_people[0]
    town = kb.get(name, "town")
    # A space before a capital is a token of its own, so after "lives in" comes the space, and
    # after "lives in " the town, as one token.
    space = tok.encode(" ")[0]
    assert true_next_token_distribution(f"{name} lives in", "fact", kb, tok) == {space: 1.0}
    assert true_next_token_distribution(f"{name} lives in ", "fact", kb, tok) == {tok.encode(town)[0]: 1.0}
    assert tok.encode(f" {town}") == [space, tok.encode(town)[0]]
    # Where every next word is one token, the token distribution is the word distribution.
    prefix = "Once upon a time, in the town of "
    words = true_next_word_distribution(prefix.rstrip(), "story", kb)
    tokens = true_next_token_distribution(prefix, "story", kb, tok)
    assert abs(sum(tokens.values()) - 1) < 1e-12
    assert {tok.decode([t]): p for t, p in tokens.items()} == pytest.approx(words)
    # Numbers are split into digits: after "is" the age starts with a lone space token.
    ages = true_next_token_distribution(f"{name} is", "fact", kb, tok)
    assert space in ages
    # A finished one-fact document ends with EOS or goes on with a newline and another fact.
    after = true_next_token_distribution(f"{name} lives in {town}.", "fact", kb, tok)
    assert tok.eos_token_id in after and abs(sum(after.values()) - 1) < 1e-12
    # Half a town name: every continuation joins the prefix's last token, so none can follow it.
    with pytest.raises(ValueError, match="token boundary"):
        true_next_token_distribution(f"{name} lives in {town[:2]}", "fact", kb, tok)
    with pytest.raises(ValueError, match="cannot be produced"):
        true_next_token_distribution("Zzz", "fact", kb, tok)
