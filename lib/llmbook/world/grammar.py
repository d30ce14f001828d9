"""The world's language: every sentence shape TinyWorld writes, as templates with typed slots.

One :class:`Template` both *renders* a sentence for the generators and *parses* one for
the checkers, so the two can never disagree. A slot's type decides what may fill it:
proper-noun slots take any capitalised word (so "Zorp lives in Tolbury." is grammatical,
and simply false), closed word classes take only their listed words, numbers take digits.
Templates are written so that no two of them can produce the same sentence; a test checks
that every generated sentence parses under exactly one template.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Mapping, NamedTuple

from .lexicon import DAYS, FOODS, ITEM_PLURALS, ITEMS, JOBS, REGIONS, SPECIES, WEATHER


class Claim(NamedTuple):
    """One fact a sentence asserts: ``attribute`` of ``entity`` is ``value``.

    For ``attribute == "friends"`` the claim is membership: ``value`` is one of the friends.
    """

    entity: str
    attribute: str
    value: str | int


_PROPER = r"[A-Z][a-z]+"
_NUMBER = r"0|[1-9][0-9]*"
# Slot name -> (regex, allowed words or None for an open class).
SLOT_TYPES: dict[str, tuple[str, frozenset[str] | None]] = {
    "person": (_PROPER, None),
    "friend": (_PROPER, None),
    "town": (_PROPER, None),
    "pet_name": (_PROPER, None),
    "job": (r"[a-z]+", frozenset(JOBS)),
    "species": (r"[a-z]+", frozenset(SPECIES)),
    "food": (r"[a-z]+", frozenset(FOODS)),
    "item": (r"[a-z]+", frozenset(ITEMS)),
    "items": (r"[a-z]+", frozenset(ITEM_PLURALS)),
    "region": (r"[a-z]+", frozenset(REGIONS)),
    "day": (_PROPER, frozenset(DAYS)),
    "weather": (r"[a-z]+", frozenset(WEATHER)),
    "age": (_NUMBER, None),
    "prev_age": (_NUMBER, None),
    "price": (_NUMBER, None),
}
_SLOT = re.compile(r"\{(\w+)\}")


def _no_claims(slots: Mapping[str, str]) -> tuple[Claim, ...]:
    return ()


@dataclass(frozen=True)
class Template:
    """A sentence shape such as ``"{person} lives in {town}."`` and the facts it asserts."""

    name: str
    pattern: str
    claims: Callable[[Mapping[str, str]], tuple[Claim, ...]] = _no_claims
    asserts: bool = True  # False for questions and sentences that state no fact
    slots: tuple[str, ...] = field(init=False)
    regex: re.Pattern = field(init=False, repr=False)

    def __post_init__(self) -> None:
        slots = tuple(_SLOT.findall(self.pattern))
        unknown = [s for s in slots if s not in SLOT_TYPES]
        if unknown or len(set(slots)) != len(slots):
            raise ValueError(f"template {self.name!r}: slots must be distinct and in SLOT_TYPES, got {slots}")
        pieces, last = [], 0
        for match in _SLOT.finditer(self.pattern):
            pieces.append(re.escape(self.pattern[last:match.start()]))
            pieces.append(f"(?P<{match.group(1)}>{SLOT_TYPES[match.group(1)][0]})")
            last = match.end()
        pieces.append(re.escape(self.pattern[last:]))
        object.__setattr__(self, "slots", slots)
        object.__setattr__(self, "regex", re.compile("".join(pieces) + r"\Z"))

    @property
    def lead(self) -> str:
        """The literal text before the first slot (what is known before any slot is chosen)."""
        return self.pattern.split("{", 1)[0]

    def render(self, **values: object) -> str:
        missing = [s for s in self.slots if s not in values]
        if missing:
            raise ValueError(f"template {self.name!r} needs values for slots {missing}")
        return self.pattern.format(**{s: values[s] for s in self.slots})

    def match(self, sentence: str) -> dict[str, str] | None:
        """Slot values if ``sentence`` has this shape and every closed-class slot holds a listed word."""
        found = self.regex.match(sentence)
        if not found:
            return None
        slots = found.groupdict()
        for name, value in slots.items():
            allowed = SLOT_TYPES[name][1]
            if allowed is not None and value not in allowed:
                return None
        return slots

    def value_start(self, sentence: str) -> int:
        """Character offset of the first slot after the subject (where the "answer" begins)."""
        found = self.regex.match(sentence)
        if not found or len(self.slots) < 2:
            raise ValueError(f"sentence does not match template {self.name!r} with an object slot: {sentence!r}")
        return found.start(self.slots[1])  # fact templates put the subject in the first slot


def _person(attribute: str, slot: str, as_int: bool = False):
    def claims(s: Mapping[str, str]) -> tuple[Claim, ...]:
        return (Claim(s["person"], attribute, int(s[slot]) if as_int else s[slot]),)

    return claims


def _both(*makers):
    return lambda s: tuple(c for make in makers for c in make(s))


_pet = _both(_person("pet_species", "species"), _person("pet_name", "pet_name"))
_town_job = _both(_person("town", "town"), _person("job", "job"))

# -- fact statements (the `fact` family, and the answers of `qa`) ---------------------------
FACT_TEMPLATES: dict[str, Template] = {
    "town": Template("fact_town", "{person} lives in {town}.", _person("town", "town")),
    "job": Template("fact_job", "{person} works as a {job}.", _person("job", "job")),
    "age": Template("fact_age", "{person} is {age} years old.", _person("age", "age", as_int=True)),
    "pet": Template("fact_pet", "{person} has a {species} named {pet_name}.", _pet),
    "food": Template("fact_food", "{person} likes {food}.", _person("food", "food")),
    "friend": Template("fact_friend", "{person} is friends with {friend}.", _person("friends", "friend")),
    "region": Template("fact_region", "{town} is in the {region}.", lambda s: (Claim(s["town"], "region", s["region"]),)),
    "price": Template("fact_price", "A {item} costs {price} coins.", lambda s: (Claim(s["item"], "price", int(s["price"])),)),
}

# -- questions (the `qa` family): one per fact kind, answered by FACT_TEMPLATES[kind] -------
QUESTION_TEMPLATES: dict[str, Template] = {
    "town": Template("question_town", "Where does {person} live?", asserts=False),
    "job": Template("question_job", "What does {person} do for a living?", asserts=False),
    "age": Template("question_age", "How old is {person}?", asserts=False),
    "pet": Template("question_pet", "What pet does {person} have?", asserts=False),
    "food": Template("question_food", "What food does {person} like?", asserts=False),
    "friend": Template("question_friend", "Who is a friend of {person}?", asserts=False),
    "region": Template("question_region", "Where is {town}?", asserts=False),
    "price": Template("question_price", "How much does a {item} cost?", asserts=False),
}

# -- stories ---------------------------------------------------------------------------------
STORY_INTROS: tuple[Template, ...] = (
    Template("intro_once", "Once upon a time, in the town of {town}, there lived a {job} named {person}.", _town_job),
    Template("intro_is", "{person} is a {job} who lives in {town}.", _town_job),
    Template("intro_there", "In {town}, there is a {job} called {person}.", _town_job),
)
INTRO_WEIGHTS = (2.0, 1.0, 1.0)

# Body sentences by the kind of fact they tell; each kind is told at most once per story.
STORY_BODY: dict[str, tuple[Template, ...]] = {
    "pet": (
        Template("story_pet_called", "{person} has a {species} called {pet_name}.", _pet),
        Template("story_pet_feeds", "Every morning, {person} feeds {pet_name} the {species}.", _pet),
    ),
    "food": (
        Template("story_food_loves", "{person} loves to eat {food}.", _person("food", "food")),
        Template("story_food_favourite", "The favourite food of {person} is {food}.", _person("food", "food")),
    ),
    "friend": (
        Template("story_friend_good", "{person} and {friend} are good friends.", _person("friends", "friend")),
        Template("story_friend_visits", "On {day}, {person} visits {friend}, an old friend.", _person("friends", "friend")),
    ),
    "age": (
        FACT_TEMPLATES["age"],
        Template("story_age_turned", "Last year, {person} turned {prev_age}.",
                 lambda s: (Claim(s["person"], "age", int(s["prev_age"]) + 1),)),
    ),
    "item": (
        Template("story_item_bought", "One day, {person} bought a {item} for {price} coins.",
                 lambda s: (Claim(s["item"], "price", int(s["price"])),)),
        Template("story_item_saw", "At the market, {person} saw a {item} that cost {price} coins.",
                 lambda s: (Claim(s["item"], "price", int(s["price"])),)),
    ),
    "weather": (
        Template("story_weather_was", "The weather was {weather} that day.", asserts=False),
        Template("story_weather_day", "The day was {weather}.", asserts=False),
    ),
}
STORY_ENDINGS: tuple[Template, ...] = (
    Template("ending_happy", "{person} was happy.", asserts=False),
    Template("ending_good_day", "It was a good day.", asserts=False),
    Template("ending_the_end", "The end.", asserts=False),
)
ENDING_WEIGHTS = (1.0, 1.0, 2.0)

ALL_TEMPLATES: tuple[Template, ...] = tuple(
    {t.name: t for t in (
        *FACT_TEMPLATES.values(), *QUESTION_TEMPLATES.values(), *STORY_INTROS,
        *(t for group in STORY_BODY.values() for t in group), *STORY_ENDINGS,
    )}.values()
)


def parse_sentence(sentence: str) -> tuple[Template, dict[str, str]] | None:
    """The template and slot values of a sentence of the world's language, or None."""
    for template in ALL_TEMPLATES:
        slots = template.match(sentence)
        if slots is not None:
            return template, slots
    return None


def matching_templates(sentence: str) -> list[str]:
    """Names of all templates that parse ``sentence`` (exactly one for a well-designed grammar)."""
    return [t.name for t in ALL_TEMPLATES if t.match(sentence) is not None]
