"""TinyWorld's entities and its knowledge base: the ground truth every document is checked against.

``generate_knowledge_base(seed)`` draws people (name, age, town, job, pet, favourite food,
friends), towns (with a region) and items (with a price) from ``random.Random`` streams
derived from the seed, iterating only over tuples and sorted lists, so the same seed gives
the same world on every machine and Python version.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable

from .lexicon import (
    FOODS,
    ITEMS,
    JOBS,
    PET_NAMES,
    REGIONS,
    SPECIES,
    check_seed,
    person_name_pool,
    seeded_rng,
    town_name_pool,
)

PERSON_ATTRIBUTES = ("age", "town", "job", "pet_species", "pet_name", "food", "friends")
TOWN_ATTRIBUTES = ("region", "residents")
ITEM_ATTRIBUTES = ("price",)
ATTRIBUTES = {"person": PERSON_ATTRIBUTES, "town": TOWN_ATTRIBUTES, "item": ITEM_ATTRIBUTES}
# Facts a split may hide from training; friendship is symmetric so hiding it is left out.
HIDEABLE_ATTRIBUTES = ("age", "town", "job", "pet_species", "pet_name", "food")

MIN_AGE, MAX_AGE = 18, 80
MIN_PRICE, MAX_PRICE = 2, 60  # >= 2 so "costs N coins" is always plural
MAX_FRIENDS = 4


@dataclass(frozen=True)
class Person:
    name: str
    age: int
    town: str
    job: str
    pet_species: str
    pet_name: str
    food: str
    friends: tuple[str, ...]  # sorted; symmetric across the knowledge base


@dataclass(frozen=True)
class Town:
    name: str
    region: str


@dataclass(frozen=True)
class Item:
    name: str
    price: int  # in coins


class KnowledgeBase:
    """Facts about people, towns and items, with a query API.

    A knowledge base can be a *view* of a larger one (``restrict``): fewer people, friends
    outside the view removed, and some facts hidden. Generators only state facts their view
    holds; checkers judge truth against the full world.
    """

    def __init__(
        self,
        people: Iterable[Person],
        towns: Iterable[Town],
        items: Iterable[Item],
        hidden: Iterable[tuple[str, str]] = (),
    ) -> None:
        self._people = {p.name: p for p in sorted(people, key=lambda p: p.name)}
        self._towns = {t.name: t for t in sorted(towns, key=lambda t: t.name)}
        self._items = {i.name: i for i in sorted(items, key=lambda i: i.name)}
        self.hidden = frozenset(hidden)
        for entity, attribute in self.hidden:
            if entity not in self._people or attribute not in HIDEABLE_ATTRIBUTES:
                raise ValueError(
                    f"hidden facts must be (person, attribute) with attribute in {HIDEABLE_ATTRIBUTES}, "
                    f"got {(entity, attribute)!r}"
                )
        residents: dict[str, list[str]] = {name: [] for name in self._towns}
        for person in self._people.values():
            if (person.name, "town") not in self.hidden:
                residents.setdefault(person.town, []).append(person.name)
        self._residents = {town: tuple(sorted(names)) for town, names in residents.items()}
        self._with_cache: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._memo: dict[str, object] = {}

    # -- what the knowledge base contains ---------------------------------------------
    @property
    def people(self) -> tuple[str, ...]:
        """Names of the people in this view, sorted."""
        return tuple(self._people)

    @property
    def towns(self) -> tuple[str, ...]:
        return tuple(self._towns)

    @property
    def items(self) -> tuple[str, ...]:
        return tuple(self._items)

    @property
    def attributes(self) -> dict[str, tuple[str, ...]]:
        """Attribute names per entity kind: ``{"person": (...), "town": (...), "item": (...)}``."""
        return dict(ATTRIBUTES)

    @property
    def pet_names(self) -> tuple[str, ...]:
        return tuple(sorted({p.pet_name for p in self._people.values()}))

    def kind(self, entity: str) -> str:
        """"person", "town" or "item"; ValueError for a name this view does not know."""
        if entity in self._people:
            return "person"
        if entity in self._towns:
            return "town"
        if entity in self._items:
            return "item"
        raise ValueError(f"entity must be a person, town or item of this knowledge base, got {entity!r}")

    def person(self, name: str) -> Person:
        if name not in self._people:
            raise ValueError(f"name must be a person of this knowledge base, got {name!r}")
        return self._people[name]

    # -- queries ------------------------------------------------------------------------
    def has(self, entity: str, attribute: str) -> bool:
        """Whether this view states ``attribute`` of ``entity`` (False for hidden facts)."""
        self._check_attribute(entity, attribute)
        return (entity, attribute) not in self.hidden

    def get(self, entity: str, attribute: str) -> str | int | tuple[str, ...]:
        """The value of a fact: ``kb.get("Mira", "town") -> "Tolbury"``.

        ValueError for an unknown entity or an attribute its kind does not have; KeyError
        for a real fact that this view hides (held out from training).
        """
        kind = self._check_attribute(entity, attribute)
        if (entity, attribute) in self.hidden:
            raise KeyError(f"{attribute} of {entity} is hidden in this view")
        if kind == "person":
            return getattr(self._people[entity], attribute)
        if kind == "town":
            return self._residents[entity] if attribute == "residents" else self._towns[entity].region
        return self._items[entity].price

    def people_with(self, *attributes: str) -> tuple[str, ...]:
        """People whose listed attributes are all stated (and who have a friend, for "friends")."""
        if attributes not in self._with_cache:
            for attribute in attributes:
                if attribute not in PERSON_ATTRIBUTES:
                    raise ValueError(f"attributes must be in {PERSON_ATTRIBUTES}, got {attribute!r}")
            self._with_cache[attributes] = tuple(
                name
                for name, person in self._people.items()
                if all((name, a) not in self.hidden for a in attributes)
                and ("friends" not in attributes or person.friends)
            )
        return self._with_cache[attributes]

    def memo(self, key: str, compute):
        """``compute()`` once per view and key: generators replayed thousands of times reuse it."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def restrict(
        self,
        people: Iterable[str],
        hidden: Iterable[tuple[str, str]] = (),
        filter_friends: bool = True,
    ) -> KnowledgeBase:
        """A view with only ``people`` (towns and items kept), and ``hidden`` facts left out.

        ``filter_friends`` drops friends outside the view, so no document generated from it
        can mention a person the view excludes.
        """
        keep = set(people)
        unknown = sorted(keep - set(self._people))
        if unknown:
            raise ValueError(f"people must be people of this knowledge base; unknown: {unknown[:5]}")
        members = []
        for name in sorted(keep):
            person = self._people[name]
            if filter_friends:
                person = replace(person, friends=tuple(f for f in person.friends if f in keep))
            members.append(person)
        hidden = set(hidden) | {h for h in self.hidden if h[0] in keep}
        return KnowledgeBase(members, self._towns.values(), self._items.values(), hidden)

    def _check_attribute(self, entity: str, attribute: str) -> str:
        kind = self.kind(entity)
        if attribute not in ATTRIBUTES[kind]:
            raise ValueError(f"attribute of a {kind} must be one of {ATTRIBUTES[kind]}, got {attribute!r}")
        return kind

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KnowledgeBase):
            return NotImplemented
        return (self._people, self._towns, self._items, self.hidden) == (
            other._people, other._towns, other._items, other.hidden
        )

    def __repr__(self) -> str:
        return (
            f"KnowledgeBase({len(self._people)} people, {len(self._towns)} towns, "
            f"{len(self._items)} items, {len(self.hidden)} hidden facts)"
        )


def generate_knowledge_base(seed: int, n_people: int = 400, n_towns: int = 32, n_items: int = 30) -> KnowledgeBase:
    """Draw a world: ``n_people`` people spread over ``n_towns`` towns, and ``n_items`` priced items."""
    check_seed(seed)
    names, towns = person_name_pool(), town_name_pool()
    _check_count("n_people", n_people, 2, len(names))
    _check_count("n_towns", n_towns, 1, len(towns))
    _check_count("n_items", n_items, 1, len(ITEMS))
    # Separate streams per part: changing n_items does not reshuffle the people.
    rng = seeded_rng(seed, "towns")
    town_list = [Town(name, rng.choice(REGIONS)) for name in sorted(rng.sample(towns, n_towns))]
    rng = seeded_rng(seed, "items")
    item_list = [Item(name, rng.randint(MIN_PRICE, MAX_PRICE)) for name in sorted(rng.sample(ITEMS, n_items))]
    rng = seeded_rng(seed, "people")
    chosen = sorted(rng.sample(names, n_people))
    friends = _draw_friendships(chosen, seeded_rng(seed, "friends"))
    people = [
        Person(
            name=name,
            age=rng.randint(MIN_AGE, MAX_AGE),
            town=rng.choice(town_list).name,
            job=rng.choice(JOBS),
            pet_species=rng.choice(SPECIES),
            pet_name=rng.choice(PET_NAMES),
            food=rng.choice(FOODS),
            friends=tuple(sorted(friends[name])),
        )
        for name in chosen
    ]
    return KnowledgeBase(people, town_list, item_list)


def _draw_friendships(names: list[str], rng) -> dict[str, set[str]]:
    """Symmetric friendships: each person wants 1-3 friends; nobody gets more than MAX_FRIENDS."""
    friends: dict[str, set[str]] = {name: set() for name in names}
    for name in names:
        wanted = rng.randint(1, 3)
        candidates = [m for m in names if m != name and m not in friends[name] and len(friends[m]) < MAX_FRIENDS]
        while len(friends[name]) < wanted and candidates:
            other = candidates.pop(rng.randrange(len(candidates)))
            friends[name].add(other)
            friends[other].add(name)
    return friends


def _check_count(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an int in [{low}, {high}], got {value!r}")
