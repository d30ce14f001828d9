"""The generated world: deterministic, large enough, consistent, and queried through a checked API."""

from __future__ import annotations

import subprocess
import sys

import pytest

from llmbook.world import ATTRIBUTES, KnowledgeBase, World, calculator, generate_knowledge_base, lookup
from llmbook.world.lexicon import ITEMS, JOBS, PET_NAMES, SPECIES, person_name_pool, plural


@pytest.fixture(scope="module")
def kb() -> KnowledgeBase:
    return World.generate(0).kb


def test_same_seed_same_world_and_different_seed_different_world(kb):
    assert World.generate(0).kb == kb
    assert World.generate(1).kb != kb


def test_world_is_identical_across_processes_with_different_hash_seeds():
    code = "from llmbook.world import World; kb = World.generate(0).kb; print(kb.people[:5], kb.get(kb.people[3], 'friends'))"
    outputs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={"PYTHONHASHSEED": str(h), "PYTHONPATH": ":".join(p for p in sys.path if p)}).stdout
        for h in (1, 2)
    }
    assert len(outputs) == 1


def test_world_size_and_unique_names(kb):
    assert len(kb.people) >= 300 and len(kb.towns) >= 30 and len(kb.items) >= 20
    proper = list(kb.people) + list(kb.towns)
    assert len(set(proper)) == len(proper)
    assert not set(kb.people) & set(PET_NAMES)
    assert all(name[0].isupper() and name[1:].islower() for name in proper)


def test_friendship_is_symmetric_and_never_self(kb):
    for name in kb.people:
        friends = kb.get(name, "friends")
        assert name not in friends and list(friends) == sorted(friends) and 1 <= len(friends) <= 4
        assert all(name in kb.get(friend, "friends") for friend in friends)


def test_values_come_from_the_word_lists_and_ranges(kb):
    for name in kb.people:
        person = kb.person(name)
        assert 18 <= person.age <= 80 and person.job in JOBS and person.pet_species in SPECIES
        assert person.town in kb.towns and name in kb.get(person.town, "residents")
    assert all(isinstance(kb.get(i, "price"), int) and 2 <= kb.get(i, "price") <= 60 for i in kb.items)


def test_nouns_with_an_article_start_with_a_consonant_and_plurals_are_unique():
    for noun in JOBS + SPECIES + ITEMS:
        assert noun[0] not in "aeiou", noun
    assert len({plural(i) for i in ITEMS}) == len(ITEMS) and plural("box") == "boxes"
    assert len(person_name_pool()) >= 600


def test_query_api_validates_arguments(kb):
    name = kb.people[0]
    assert kb.kind(name) == "person" and kb.kind(kb.towns[0]) == "town" and kb.kind(kb.items[0]) == "item"
    assert set(kb.attributes) == set(ATTRIBUTES) and "friends" in kb.attributes["person"]
    with pytest.raises(ValueError, match="entity must be"):
        kb.get("Nobody", "age")
    with pytest.raises(ValueError, match="attribute of a person must be one of"):
        kb.get(name, "price")


def test_restrict_drops_people_filters_friends_and_hides_facts(kb):
    keep = kb.people[:50]
    view = kb.restrict(keep, hidden=[(keep[0], "age")])
    assert view.people == keep
    assert all(set(view.get(p, "friends")) <= set(keep) for p in keep)
    with pytest.raises(KeyError):
        view.get(keep[0], "age")
    assert not view.has(keep[0], "age") and keep[0] not in view.people_with("age")
    assert all(set(view.get(t, "residents")) <= set(keep) for t in view.towns)
    with pytest.raises(ValueError, match="people must be people"):
        kb.restrict(["Nobody"])


@pytest.mark.parametrize("bad", ["0", 1.0, None, True])
def test_non_int_seeds_are_rejected(bad):
    with pytest.raises(ValueError, match="seed must be an int"):
        World.generate(bad)


@pytest.mark.parametrize("kwargs", [{"n_people": 1}, {"n_people": 10_000}, {"n_towns": 0}, {"n_items": 31}])
def test_sizes_are_validated(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        generate_knowledge_base(0, **kwargs)


def test_calculator_is_a_real_integer_calculator():
    assert calculator("2 + 3 * 4") == 14
    assert calculator("(2 + 3) * 4") == 20
    assert calculator("10 - 4 - 3") == 3
    assert calculator("-3 * -(2 + 1)") == 9
    for bad in ["", "2 +", "2 / 3", "import os", "(1 + 2", "1 2"]:
        with pytest.raises(ValueError):
            calculator(bad)


def test_lookup_reads_the_knowledge_base(kb):
    name = kb.people[0]
    assert lookup(kb, name, "town") == kb.get(name, "town")
    assert lookup(kb, name, "age") == str(kb.get(name, "age"))
    assert lookup(kb, name, "friends") == ", ".join(kb.get(name, "friends"))
    assert lookup(kb, "Nobody", "age") == "unknown"
    assert lookup(kb.restrict([name], hidden=[(name, "job")]), name, "job") == "unknown"
