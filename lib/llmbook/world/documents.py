"""TinyWorld's document families, each an explicit probabilistic program.

Every family is a function ``program(g, kb, config) -> meta`` (see :mod:`.program`): it
calls ``g.choice`` for each random decision and ``g.emit`` for the text. Sampling it gives
a :class:`Document` with the exact log probability of its text; replaying it gives exact
next-word distributions (:func:`true_next_word_distribution`) and exact text
probabilities (:func:`document_logprob`).

The grammars are unambiguous: the text determines every decision (templates never share
a sentence, numbers and names are written out, and every "stop or go on" decision is
visible as the end of the text or the start of another sentence). So the probability of
a path *is* the probability of its text; tests check this by enumeration and by replay.
Facts come from the knowledge base given (a view that may hide people and facts), and
tool observations come from really running the tools; they add no log probability.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable

from .entities import KnowledgeBase
from .grammar import (
    ENDING_WEIGHTS,
    FACT_TEMPLATES,
    INTRO_WEIGHTS,
    QUESTION_TEMPLATES,
    STORY_BODY,
    STORY_ENDINGS,
    STORY_INTROS,
    Claim,
    Template,
)
from .lexicon import DAYS, WEATHER, plural, seeded_rng
from .program import Chooser, Program, continuation_masses, enumerate_paths, next_word_distribution, run, text_logprob
from .tools import calculator, lookup


@dataclass(frozen=True)
class Document:
    """A sampled document: its text, the exact natural-log probability of that text, and meta."""

    family: str
    text: str
    logprob: float
    meta: dict = field(compare=False)


# -- argument checks -----------------------------------------------------------------------
def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an int in [{low}, {high}], got {value!r}")


def _check_probability(name: str, value: object, open_interval: bool = True) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not (0 < value < 1 if open_interval else 0 <= value <= 1):
        interval = "(0, 1)" if open_interval else "[0, 1]"
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")


def _check_weights(name: str, weights: object, length: int) -> None:
    if (
        not isinstance(weights, tuple) or len(weights) != length
        or any(isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0 for w in weights)
        or sum(weights) <= 0
    ):
        raise ValueError(f"{name} must be a tuple of {length} finite numbers >= 0, not all 0, got {weights!r}")


# -- facts about one entity, shared by several families -------------------------------------
# Which knowledge-base attributes each kind of fact sentence states.
FACT_ATTRIBUTES = {"town": ("town",), "job": ("job",), "age": ("age",), "pet": ("pet_species", "pet_name"), "food": ("food",)}


def person_facts(kb: KnowledgeBase, name: str) -> tuple[str, ...]:
    """The facts a view states about a person: "town", "job", ..., and "friend:<name>" per friend."""
    def compute() -> tuple[str, ...]:
        facts = [key for key, attrs in FACT_ATTRIBUTES.items() if all(kb.has(name, a) for a in attrs)]
        return tuple(facts + [f"friend:{friend}" for friend in kb.get(name, "friends")])

    return kb.memo(f"facts/{name}", compute)


def fact_values(kb: KnowledgeBase, entity: str) -> dict[str, object]:
    """Slot values for every template about ``entity`` (a person, town or item)."""
    kind = kb.kind(entity)
    if kind == "town":
        return {"town": entity, "region": kb.get(entity, "region")}
    if kind == "item":
        return {"item": entity, "price": kb.get(entity, "price"), "items": plural(entity)}
    p = kb.person(entity)
    return {"person": p.name, "town": p.town, "job": p.job, "age": p.age, "prev_age": p.age - 1,
            "species": p.pet_species, "pet_name": p.pet_name, "food": p.food}


def render_fact(kb: KnowledgeBase, entity: str, fact: str) -> str:
    """The canonical fact sentence, e.g. ``render_fact(kb, "Mira", "town") -> "Mira lives in Tolbury."``."""
    key, _, friend = fact.partition(":")
    if key not in FACT_TEMPLATES:
        raise ValueError(f"fact must be one of {tuple(FACT_TEMPLATES)} or 'friend:<name>', got {fact!r}")
    return FACT_TEMPLATES[key].render(**fact_values(kb, entity), friend=friend)


def _claims(template: Template, sentence: str) -> list[Claim]:
    return list(template.claims(template.match(sentence)))


# -- story ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class StoryConfig:
    """An intro, ``min_body`` to ``max_body`` body sentences, then an ending."""

    min_body: int = 2
    max_body: int = 5
    stop_probability: float = 0.35  # chance to stop before each body sentence past min_body

    def __post_init__(self) -> None:
        _check_int("min_body", self.min_body, 0, 12)
        _check_int("max_body", self.max_body, self.min_body, 12)
        _check_probability("stop_probability", self.stop_probability)


def story_kinds(kb: KnowledgeBase, name: str) -> tuple[str, ...]:
    """The body-sentence kinds a story about ``name`` can use (each at most once)."""
    kinds = [k for k in ("pet", "food", "age") if all(kb.has(name, a) for a in FACT_ATTRIBUTES[k])]
    kinds += ["item"] if kb.items else []
    return tuple(kinds + ["weather"] + [f"friend:{f}" for f in kb.get(name, "friends")])


def story_program(g: Chooser, kb: KnowledgeBase, config: StoryConfig) -> dict:
    intro = g.choice(STORY_INTROS, INTRO_WEIGHTS)
    g.emit(intro.lead)  # emitted before the person is chosen: lets the replay prune early
    name = g.choice(kb.people_with("town", "job"))
    values = fact_values(kb, name)
    told = [(intro, intro.render(**values))]  # (template, sentence) pairs
    g.emit(told[0][1][len(intro.lead):])
    kinds = list(story_kinds(kb, name))
    while kinds and len(told) - 1 < config.max_body:
        if len(told) - 1 >= config.min_body and g.choice((False, True), (1 - config.stop_probability, config.stop_probability)):
            break
        kind = g.choice(kinds)
        kinds.remove(kind)
        key, _, friend = kind.partition(":")
        template = g.choice(STORY_BODY[key])
        slots = dict(values, friend=friend)
        if "item" in template.slots:
            slots.update(fact_values(kb, g.choice(kb.items)))
        if "day" in template.slots:
            slots["day"] = g.choice(DAYS)
        if "weather" in template.slots:
            slots["weather"] = g.choice(WEATHER)
        told.append((template, template.render(**slots)))
        g.emit(" " + told[-1][1])
    ending = g.choice(STORY_ENDINGS, ENDING_WEIGHTS)
    told.append((ending, ending.render(person=name)))
    g.emit(" " + told[-1][1])
    return {"person": name, "sentences": [s for _, s in told], "templates": [t.name for t, _ in told],
            "claims": [c for t, s in told for c in _claims(t, s)]}


# -- fact statements -------------------------------------------------------------------------
@dataclass(frozen=True)
class FactConfig:
    """One to ``max_facts`` fact sentences, one per line, about people, towns or items."""

    max_facts: int = 4
    continue_probability: float = 0.6
    subject_weights: tuple[float, float, float] = (8.0, 1.0, 1.0)  # person, town, item

    def __post_init__(self) -> None:
        _check_int("max_facts", self.max_facts, 1, 50)
        _check_probability("continue_probability", self.continue_probability)
        _check_weights("subject_weights", self.subject_weights, 3)


def fact_sentence(g: Chooser, kb: KnowledgeBase, subject_weights=(8.0, 1.0, 1.0)) -> tuple[str, str, str]:
    """Draw one fact sentence; returns ``(sentence, subject, fact)``."""
    pools = {"person": kb.people, "town": kb.towns, "item": kb.items}
    kinds = [(k, w) for k, w in zip(pools, subject_weights) if pools[k] and w > 0]
    kind = g.choice([k for k, _ in kinds], [w for _, w in kinds])
    subject = g.choice(pools[kind])
    shown = f"A {subject}" if kind == "item" else subject
    g.emit(shown)
    if kind == "person":
        fact = g.choice(person_facts(kb, subject))
    else:
        fact = "region" if kind == "town" else "price"
    sentence = render_fact(kb, subject, fact)
    g.emit(sentence[len(shown):])
    return sentence, subject, fact


def fact_program(g: Chooser, kb: KnowledgeBase, config: FactConfig) -> dict:
    lines: list[dict] = []
    while True:
        if lines:
            if len(lines) == config.max_facts:
                break
            go_on = g.choice((True, False), (config.continue_probability, 1 - config.continue_probability))
            if not go_on:
                break
            g.emit("\n")
        sentence, subject, fact = fact_sentence(g, kb, config.subject_weights)
        template = FACT_TEMPLATES[fact.partition(":")[0]]
        lines.append({"text": sentence, "subject": subject, "fact": fact,
                      "value_start": template.value_start(sentence), "claims": _claims(template, sentence)})
    return {"lines": lines, "claims": [c for line in lines for c in line["claims"]]}


# -- question-answer pairs --------------------------------------------------------------------
@dataclass(frozen=True)
class QAConfig:
    """One to ``max_pairs`` question-answer pairs, separated by a blank line."""

    max_pairs: int = 3
    continue_probability: float = 0.4

    def __post_init__(self) -> None:
        _check_int("max_pairs", self.max_pairs, 1, 50)
        _check_probability("continue_probability", self.continue_probability)


def qa_subjects(kb: KnowledgeBase, kind: str) -> tuple[str, ...]:
    """Entities a question of ``kind`` ("town", ..., "region", "price") can be asked about."""
    if kind == "region":
        return kb.towns
    if kind == "price":
        return kb.items
    if kind == "friend":
        return kb.people_with("friends")
    return kb.people_with(*FACT_ATTRIBUTES[kind])


def qa_pair(g: Chooser, kb: KnowledgeBase) -> dict:
    """Draw one "Question: ...\\nAnswer: ..." pair and emit it."""
    kinds = [k for k in QUESTION_TEMPLATES if qa_subjects(kb, k)]
    kind = g.choice(kinds)
    question_template = QUESTION_TEMPLATES[kind]
    start = len(g.text)
    g.emit("Question: " + question_template.lead)
    subject = g.choice(qa_subjects(kb, kind))
    question = question_template.render(**fact_values(kb, subject))
    g.emit(question[len(question_template.lead):] + "\nAnswer:")
    prompt = g.text[start:]
    fact = f"friend:{g.choice(kb.get(subject, 'friends'))}" if kind == "friend" else kind
    answer = render_fact(kb, subject, fact)
    g.emit(" " + answer)
    return {"kind": kind, "subject": subject, "question": question, "answer": answer, "prompt": prompt,
            "claims": _claims(FACT_TEMPLATES[kind], answer)}


def qa_program(g: Chooser, kb: KnowledgeBase, config: QAConfig) -> dict:
    pairs = [qa_pair(g, kb)]
    while len(pairs) < config.max_pairs and g.choice((True, False), (config.continue_probability, 1 - config.continue_probability)):
        g.emit("\n\n")
        pairs.append(qa_pair(g, kb))
    return {"pairs": pairs, "claims": [c for p in pairs for c in p["claims"]]}


# -- JSON entity cards ---------------------------------------------------------------------
@dataclass(frozen=True)
class CardConfig:
    """A person card or a town card, chosen with these weights."""

    person_weight: float = 4.0
    town_weight: float = 1.0

    def __post_init__(self) -> None:
        _check_weights("(person_weight, town_weight)", (self.person_weight, self.town_weight), 2)


CARD_ATTRIBUTES = ("age", "town", "job", "pet_species", "pet_name", "food")


def person_card(kb: KnowledgeBase, name: str) -> dict:
    """The person card; dict order is the schema's key order, so ``json.dumps`` is deterministic."""
    p = kb.person(name)
    return {
        "name": p.name,
        "age": kb.get(name, "age"),
        "town": {"name": kb.get(name, "town"), "region": kb.get(p.town, "region")},
        "job": kb.get(name, "job"),
        "pet": {"species": kb.get(name, "pet_species"), "name": kb.get(name, "pet_name")},
        "favourite_food": kb.get(name, "food"),
        "friends": list(kb.get(name, "friends")),
    }


def town_card(kb: KnowledgeBase, town: str) -> dict:
    return {"town": town, "region": kb.get(town, "region"), "residents": list(kb.get(town, "residents"))}


def card_text(card: dict) -> str:
    """One line of JSON with ``", "`` and ``": "`` separators, keys in schema order."""
    return json.dumps(card, ensure_ascii=True)


def card_claims(kb: KnowledgeBase, card: dict) -> list[Claim]:
    if "town" in card and isinstance(card["town"], str):
        return [Claim(card["town"], "region", card["region"])] + [Claim(r, "town", card["town"]) for r in card["residents"]]
    name = card["name"]
    return [Claim(name, "age", card["age"]), Claim(name, "town", card["town"]["name"]),
            Claim(card["town"]["name"], "region", card["town"]["region"]), Claim(name, "job", card["job"]),
            Claim(name, "pet_species", card["pet"]["species"]), Claim(name, "pet_name", card["pet"]["name"]),
            Claim(name, "food", card["favourite_food"])] + [Claim(name, "friends", f) for f in card["friends"]]


def card_program(g: Chooser, kb: KnowledgeBase, config: CardConfig) -> dict:
    people = kb.people_with(*CARD_ATTRIBUTES)
    kinds = [(k, w) for k, w, pool in (("person", config.person_weight, people), ("town", config.town_weight, kb.towns)) if pool and w > 0]
    kind = g.choice([k for k, _ in kinds], [w for _, w in kinds])
    lead = '{"name": "' if kind == "person" else '{"town": "'
    g.emit(lead)
    entity = g.choice(people if kind == "person" else kb.towns)
    card = person_card(kb, entity) if kind == "person" else town_card(kb, entity)
    text = card_text(card)
    g.emit(text[len(lead):])
    return {"kind": kind, "entity": entity, "card": card, "claims": card_claims(kb, card)}


# -- ReAct tool-use traces ----------------------------------------------------------------------
@dataclass(frozen=True)
class ReactConfig:
    """Tasks: look up a fact, calculate, price of n items (lookup + calculator), sum of two ages."""

    task_weights: tuple[float, float, float, float] = (2.0, 1.0, 1.0, 1.0)
    max_operand: int = 999
    max_quantity: int = 9

    def __post_init__(self) -> None:
        _check_weights("task_weights", self.task_weights, 4)
        _check_int("max_operand", self.max_operand, 1, 10**6)
        _check_int("max_quantity", self.max_quantity, 2, 1000)


REACT_TASKS = ("lookup", "calculator", "price", "ages")
REACT_LOOKUPS = {"town": "town", "job": "job", "age": "age", "food": "favourite food"}


def _react_step(thought: str, action: str, observation: str) -> str:
    return f"Thought: {thought}\nAction: {action}\nObservation: {observation}\n"


def react_program(g: Chooser, kb: KnowledgeBase, config: ReactConfig) -> dict:
    aged = kb.people_with("age")
    available = {"lookup": any(kb.people_with(a) for a in REACT_LOOKUPS), "calculator": True,
                 "price": bool(kb.items), "ages": len(aged) >= 2}
    tasks = [(t, w) for t, w in zip(REACT_TASKS, config.task_weights) if available[t] and w > 0]
    task = g.choice([t for t, _ in tasks], [w for _, w in tasks])
    g.emit("Question: ")
    claims: list[Claim] = []
    if task == "lookup":
        attribute = g.choice([a for a in REACT_LOOKUPS if kb.people_with(a)])
        template = QUESTION_TEMPLATES[attribute]
        g.emit(template.lead)
        name = g.choice(kb.people_with(attribute))
        question = template.render(person=name)
        answer = render_fact(kb, name, attribute)
        steps = _react_step(f"I need the {REACT_LOOKUPS[attribute]} of {name}.",
                            f"lookup[{name}, {attribute}]", lookup(kb, name, attribute))
        claims.append(Claim(name, attribute, kb.get(name, attribute)))
        g.emit(question[len(template.lead):] + "\n")
    elif task == "calculator":
        g.emit("What is ")
        a = g.choice(range(config.max_operand + 1))
        g.emit(f"{a} ")
        op = g.choice(("+", "-", "*"))
        g.emit(f"{op} ")
        b = g.choice(range((a if op == "-" else config.max_operand) + 1))  # a - b stays >= 0
        expression = f"{a} {op} {b}"
        question = f"What is {expression}?"
        answer = str(calculator(expression))
        steps = _react_step("I will use the calculator.", f"calculator[{expression}]", answer)
        g.emit(f"{b}?\n")
    elif task == "price":
        g.emit("How much do ")
        n = g.choice(range(2, config.max_quantity + 1))
        g.emit(f"{n} ")
        item = g.choice(kb.items)
        price = lookup(kb, item, "price")
        total = calculator(f"{n} * {price}")
        question = f"How much do {n} {plural(item)} cost?"
        answer = f"{n} {plural(item)} cost {total} coins."
        steps = (_react_step(f"I need the price of a {item}.", f"lookup[{item}, price]", price)
                 + _react_step(f"Now I multiply {n} by {price}.", f"calculator[{n} * {price}]", str(total)))
        claims.append(Claim(item, "price", kb.get(item, "price")))
        g.emit(question[len(f"How much do {n} "):] + "\n")
    else:
        g.emit("How old are ")
        first = g.choice(aged)
        g.emit(first)
        second = g.choice([p for p in aged if p != first])
        ages = [lookup(kb, first, "age"), lookup(kb, second, "age")]
        total = calculator(f"{ages[0]} + {ages[1]}")
        question = f"How old are {first} and {second} together?"
        answer = f"{first} and {second} are {total} years old together."
        steps = (_react_step(f"I need the age of {first}.", f"lookup[{first}, age]", ages[0])
                 + _react_step(f"I need the age of {second}.", f"lookup[{second}, age]", ages[1])
                 + _react_step("Now I add the two ages.", f"calculator[{ages[0]} + {ages[1]}]", str(total)))
        claims += [Claim(first, "age", kb.get(first, "age")), Claim(second, "age", kb.get(second, "age"))]
        g.emit(f" and {second} together?\n")
    g.emit(steps + f"Answer: {answer}")
    return {"task": task, "question": question, "answer": answer, "claims": claims,
            "prompt": f"Question: {question}\n"}


# -- arithmetic ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ArithmeticConfig:
    """Addition and multiplication, answered directly or with a scratchpad."""

    max_digits_add: int = 3
    max_digits_mul_a: int = 3
    max_digits_mul_b: int = 2
    scratchpad_probability: float = 0.5

    def __post_init__(self) -> None:
        for name in ("max_digits_add", "max_digits_mul_a", "max_digits_mul_b"):
            _check_int(name, getattr(self, name), 1, 9)
        _check_probability("scratchpad_probability", self.scratchpad_probability, open_interval=False)


def _column_addition(a: int, b: int) -> list[str]:
    """Column addition, least significant digit first: one line per column, with its carry."""
    lines, carry = [], 0
    digits_a, digits_b = str(a)[::-1], str(b)[::-1]
    for i in range(max(len(digits_a), len(digits_b))):
        da = int(digits_a[i]) if i < len(digits_a) else 0
        db = int(digits_b[i]) if i < len(digits_b) else 0
        total = da + db + carry
        lines.append(f"{da} + {db} + {carry} = {total}, write {total % 10}, carry {total // 10}")
        carry = total // 10
    return lines


def scratchpad_lines(a: int, op: str, b: int) -> list[str]:
    """The worked steps, one digit at a time, least significant digit first.

    Addition: one line per column, ``da + db + carry = s, write w, carry k``.
    Multiplication: for each digit of ``b`` (units first), one line per digit of ``a``,
    ``da * db + carry = s, write w, carry k``, then the partial product it gives,
    ``a * (db * 10^i) = p``; with two or more partial products, they are summed by column
    addition and the sum is stated, ``p0 + p1 = total``. Every line is one single-digit
    operation or a restatement of digits written just above: the steps a small transformer
    can learn, unlike a multi-digit product in one line (Lee et al., "Teaching Arithmetic
    to Small Transformers", ICLR 2024).
    """
    if op == "+":
        return _column_addition(a, b)
    if op == "*":
        lines, partials = [], []
        for i, db in enumerate(int(d) for d in str(b)[::-1]):
            carry = 0
            for da in (int(d) for d in str(a)[::-1]):
                total = da * db + carry
                lines.append(f"{da} * {db} + {carry} = {total}, write {total % 10}, carry {total // 10}")
                carry = total // 10
            partials.append(a * db * 10**i)
            lines.append(f"{a} * {db * 10**i} = {partials[-1]}")
        running = partials[0]
        for p in partials[1:]:
            lines += _column_addition(running, p)
            lines.append(f"{running} + {p} = {running + p}")
            running += p
        return lines
    raise ValueError(f"op must be '+' or '*', got {op!r}")


def _number_with_digits(g: Chooser, max_digits: int) -> int:
    digits = g.choice(range(1, max_digits + 1))
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return g.choice(range(low, 10**digits))


def arithmetic_program(g: Chooser, kb: KnowledgeBase, config: ArithmeticConfig) -> dict:
    op = g.choice(("+", "*"))
    a = _number_with_digits(g, config.max_digits_add if op == "+" else config.max_digits_mul_a)
    g.emit(f"Compute {a} {op} ")
    b = _number_with_digits(g, config.max_digits_add if op == "+" else config.max_digits_mul_b)
    g.emit(str(b))
    p = config.scratchpad_probability
    scratchpad = g.choice((False, True), (1 - p, p)) if 0 < p < 1 else p == 1
    steps = scratchpad_lines(a, op, b) if scratchpad else []
    result = a + b if op == "+" else a * b
    prompt = f"Compute {a} {op} {b}" + (" step by step.\n" if scratchpad else ".\n")
    if not scratchpad:
        prompt += "Answer:"
    g.emit(prompt[len(f"Compute {a} {op} {b}"):] + "".join(line + "\n" for line in steps)
           + ("Answer:" if scratchpad else "") + f" {result}")
    return {"op": op, "a": a, "b": b, "answer": str(result), "scratchpad": scratchpad, "steps": steps, "prompt": prompt,
            "claims": []}


# -- long-context retrieval -----------------------------------------------------------------------
@dataclass(frozen=True)
class RetrievalConfig:
    """Many "name: value" records of one attribute, then a question about one record."""

    n_records: tuple[int, ...] = (8, 16, 32)

    def __post_init__(self) -> None:
        if not isinstance(self.n_records, tuple) or not self.n_records or len(set(self.n_records)) != len(self.n_records):
            raise ValueError(f"n_records must be a non-empty tuple of distinct ints, got {self.n_records!r}")
        for n in self.n_records:
            _check_int("n_records entries", n, 1, 1000)


RETRIEVAL_ATTRIBUTES = {"town": "town", "job": "job", "food": "favourite food", "age": "age", "pet_name": "pet name"}


def retrieval_header(label: str) -> str:
    """The first line of a retrieval document: ``"Records of <label>:\\n"``."""
    return f"Records of {label}:\n"


def retrieval_record(index: int, name: str, value: object) -> str:
    """Record ``index`` (0-based) of a retrieval document: ``"<index + 1>. <name>: <value>\\n"``."""
    return f"{index + 1}. {name}: {value}\n"


def retrieval_question(label: str, name: str) -> str:
    """The question that ends a retrieval document; the answer follows it after a space."""
    return f"Question: What is the {label} of {name}?\nAnswer:"


def retrieval_program(g: Chooser, kb: KnowledgeBase, config: RetrievalConfig) -> dict:
    smallest = min(config.n_records)
    attribute = g.choice([a for a in RETRIEVAL_ATTRIBUTES if len(kb.people_with(a)) >= smallest])
    label = RETRIEVAL_ATTRIBUTES[attribute]
    holders = list(kb.people_with(attribute))
    g.emit(retrieval_header(label))
    n = g.choice([n for n in config.n_records if n <= len(holders)])
    names, offsets = [], []
    for i in range(n):
        name = g.choice(holders)
        holders.remove(name)  # records name distinct people, so the question has one answer
        names.append(name)
        line = retrieval_record(i, name, kb.get(name, attribute))
        offsets.append(len(g.text) + line.rindex(": ") + 2)
        g.emit(line)
    target = g.choice(range(n))
    answer = str(kb.get(names[target], attribute))
    question = retrieval_question(label, names[target])
    prompt = g.text + question
    g.emit(question + f" {answer}")
    return {"attribute": attribute, "n_records": n, "names": names, "answer": answer, "answer_index": target,
            "answer_offset": offsets[target], "prompt": prompt,
            "claims": [Claim(name, attribute, kb.get(name, attribute)) for name in names]}


# -- the registry -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Family:
    name: str
    program: Callable[[Chooser, KnowledgeBase, Any], dict]
    config_type: type


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("story", story_program, StoryConfig),
        Family("fact", fact_program, FactConfig),
        Family("qa", qa_program, QAConfig),
        Family("card", card_program, CardConfig),
        Family("react", react_program, ReactConfig),
        Family("arithmetic", arithmetic_program, ArithmeticConfig),
        Family("retrieval", retrieval_program, RetrievalConfig),
    )
}


def get_family(name: str) -> Family:
    """The family called ``name``; ValueError listing the known ones otherwise."""
    if name not in FAMILIES:
        raise ValueError(f"family must be one of {sorted(FAMILIES)}, got {name!r}")
    return FAMILIES[name]


def family_program(family: str, kb: KnowledgeBase, config: Any = None) -> Program:
    """The family's program bound to a knowledge base and config: ``program(g) -> meta``."""
    spec = get_family(family)
    if not isinstance(kb, KnowledgeBase):
        raise ValueError(f"kb must be a KnowledgeBase, got {type(kb).__name__}")
    if config is None:
        config = spec.config_type()
    elif not isinstance(config, spec.config_type):
        raise ValueError(f"config for {family!r} must be a {spec.config_type.__name__}, got {type(config).__name__}")
    return lambda g: spec.program(g, kb, config)


def sample_document(family: str, kb: KnowledgeBase, rng: random.Random, config: Any = None) -> Document:
    """Draw one document of ``family`` with ``rng``."""
    if not isinstance(rng, random.Random):
        raise ValueError(f"rng must be a random.Random, got {type(rng).__name__}")
    text, logprob, meta = run(family_program(family, kb, config), rng)
    return Document(family, text, logprob, meta)


def sample_documents(family: str, kb: KnowledgeBase, seed: int, n: int, config: Any = None) -> list[Document]:
    """``n`` documents of ``family``, reproducible from ``seed``."""
    _check_int("n", n, 0, 10**8)
    rng = seeded_rng(seed, f"documents/{family}")
    program = family_program(family, kb, config)
    docs = []
    for _ in range(n):
        text, logprob, meta = run(program, rng)
        docs.append(Document(family, text, logprob, meta))
    return docs


def true_next_word_distribution(prefix: str, family: str, kb: KnowledgeBase, config: Any = None,
                                max_runs: int = 1_000_000) -> dict[str, float]:
    """The generator's exact distribution of the next word after ``prefix`` in ``family``.

    ``true_next_word_distribution("Mira lives in", "fact", kb) -> {"Tolbury": 1.0}``. Words
    are runs of letters/digits or single punctuation marks; ``"<end>"`` is the end of the
    document. ValueError if the family cannot produce ``prefix``.
    """
    return next_word_distribution(family_program(family, kb, config), prefix, max_runs)


def true_next_token_distribution(prefix: str, family: str, kb: KnowledgeBase, tokenizer: Any, config: Any = None,
                                 max_runs: int = 1_000_000) -> dict[int, float]:
    """The generator's exact distribution of the next *token* after ``prefix``, as token id -> probability.

    What a perfect model would predict at that position: every continuation the family can
    write is tokenized with ``tokenizer`` (an :class:`llmbook.tokenizer.Tokenizer`) and its
    probability goes to its first token after the prefix (the EOS id where the document ends).
    A model sees tokens, so the condition is the prefix's *tokens*: continuations that the
    tokenizer would join to the end of the prefix ("A" + "radan" is the one token "Aradan")
    cannot follow them and are left out, and the rest renormalised.
    ValueError if the family cannot produce ``prefix``, or if no continuation keeps its tokens
    (e.g. a trailing space that the tokenizer always joins to the next word).
    """
    prefix_ids = tokenizer.encode(prefix, add_bos=False)
    masses: dict[int, list[float]] = {}
    continuations = continuation_masses(family_program(family, kb, config), prefix, max_runs)
    for continuation, logprob in continuations:
        if continuation == "":
            token = tokenizer.eos_token_id
        else:
            ids = tokenizer.encode(prefix + continuation, add_bos=False)
            if ids[: len(prefix_ids)] != prefix_ids or len(ids) == len(prefix_ids):
                continue  # tokenized across the end of the prefix: not a continuation of these tokens
            token = ids[len(prefix_ids)]
        masses.setdefault(token, []).append(logprob)
    if continuations and not masses:
        raise ValueError(f"prefix must end on a token boundary: every continuation of {prefix[-20:]!r} "
                         "is tokenized across its end")
    if not masses:
        raise ValueError(f"prefix cannot be produced by the {family!r} family: {prefix[:80]!r}")
    top = max(v for values in masses.values() for v in values)
    weights = {t: sum(math.exp(v - top) for v in values) for t, values in masses.items()}
    total = sum(weights.values())
    return dict(sorted(((t, w / total) for t, w in weights.items()), key=lambda kv: (-kv[1], kv[0])))


def document_logprob(text: str, family: str, kb: KnowledgeBase, config: Any = None, max_runs: int = 1_000_000) -> float:
    """Exact log P(text) under ``family``, summed over all paths (-inf if it cannot be produced)."""
    return text_logprob(family_program(family, kb, config), text, max_runs)


def enumerate_documents(family: str, kb: KnowledgeBase, config: Any = None, max_runs: int = 1_000_000) -> list[tuple[str, float]]:
    """Every ``(text, logprob)`` path of ``family`` on a small knowledge base and config."""
    return enumerate_paths(family_program(family, kb, config), max_runs)
