"""Checking text against TinyWorld: does it parse in the world's language, and is it true?

These functions turn "the model hallucinates" into numbers. Each takes generated text
and the knowledge base holding the *whole* truth (not a training view), and reports
exactly what failed. Generated documents always pass; tests perturb them to show that
each kind of error is caught.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

from .documents import FAMILIES, card_claims, scratchpad_lines
from .entities import KnowledgeBase
from .grammar import FACT_TEMPLATES, QUESTION_TEMPLATES, Claim, parse_sentence
from .lexicon import plural
from .tools import calculator, lookup

_LABEL = re.compile(r"^(?:Question|Answer):\s*")
_SENTENCE_END = re.compile(r"(?<=[.?!])\s+")


# -- statements -------------------------------------------------------------------------------
@dataclass(frozen=True)
class StatementCheck:
    """One statement: ``parses`` in the world's language; ``true`` in the KB (None: asserts no fact)."""

    text: str
    parses: bool
    true: bool | None
    template: str | None = None
    false_claims: tuple[Claim, ...] = ()


def claim_is_true(kb: KnowledgeBase, claim: Claim) -> bool:
    """Whether the KB holds ``claim``; unknown entities and wrong attributes make it false."""
    try:
        value = kb.get(claim.entity, claim.attribute)
    except (KeyError, ValueError):
        return False
    if claim.attribute in ("friends", "residents"):
        return claim.value in value
    return value == claim.value


def split_statements(text: str) -> list[str]:
    """Sentences of ``text``, one per statement, with "Question:"/"Answer:" labels removed."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    statements = []
    for line in text.splitlines():
        line = _LABEL.sub("", line.strip())
        statements += [s.strip() for s in _SENTENCE_END.split(line) if s.strip()]
    return statements


def check_statement(sentence: str, kb: KnowledgeBase) -> StatementCheck:
    parsed = parse_sentence(sentence)
    if parsed is None:
        return StatementCheck(sentence, parses=False, true=None)
    template, slots = parsed
    if not template.asserts:
        return StatementCheck(sentence, True, None, template.name)
    false = tuple(c for c in template.claims(slots) if not claim_is_true(kb, c))
    return StatementCheck(sentence, True, not false, template.name, false)


def check_statements(text: str, kb: KnowledgeBase) -> list[StatementCheck]:
    """Parse and fact-check every statement of ``text`` (stories, facts, QA answers)."""
    return [check_statement(s, kb) for s in split_statements(text)]


def hallucination_rate(checks: list[StatementCheck]) -> float:
    """Share of fact-asserting, parsed statements that are false (nan when there are none)."""
    judged = [c for c in checks if c.parses and c.true is not None]
    return sum(not c.true for c in judged) / len(judged) if judged else math.nan


def grammatical_error_rate(checks: list[StatementCheck]) -> float:
    """Share of statements that do not parse in the world's language (nan for no statements)."""
    return sum(not c.parses for c in checks) / len(checks) if checks else math.nan


# -- question-answer pairs ----------------------------------------------------------------------
@dataclass(frozen=True)
class QACheck:
    question_parses: bool
    answer_parses: bool
    correct: bool
    kind: str | None = None
    subject: str | None = None


def parse_question(question: str) -> tuple[str, str] | None:
    """``(kind, subject)`` of a question of the world's language, e.g. ("town", "Mira")."""
    for kind, template in QUESTION_TEMPLATES.items():
        slots = template.match(question)
        if slots is not None:
            return kind, slots[template.slots[0]]
    return None


def check_answer(kind: str, subject: str, answer: str, kb: KnowledgeBase) -> tuple[bool, bool]:
    """``(parses, correct)`` for an answer sentence to a ``kind`` question about ``subject``."""
    template = FACT_TEMPLATES[kind]
    slots = template.match(answer.strip())
    if slots is None:
        return False, False
    on_topic = slots[template.slots[0]] == subject
    return True, on_topic and all(claim_is_true(kb, c) for c in template.claims(slots))


def check_qa(text: str, kb: KnowledgeBase) -> QACheck:
    """Check the first "Question: ...\\nAnswer: ..." pair of ``text``: is the answer right?"""
    question = re.search(r"^Question: (.*)$", text, re.M)
    answer = re.search(r"^Answer:(.*)$", text, re.M)
    parsed = parse_question(question.group(1).strip()) if question else None
    if parsed is None:
        return QACheck(False, False, False)
    kind, subject = parsed
    if answer is None:
        return QACheck(True, False, False, kind, subject)
    parses, correct = check_answer(kind, subject, answer.group(1), kb)
    return QACheck(True, parses, correct, kind, subject)


# -- JSON cards ---------------------------------------------------------------------------------
PERSON_CARD_SCHEMA = {"name": str, "age": int, "town": {"name": str, "region": str}, "job": str,
                      "pet": {"species": str, "name": str}, "favourite_food": str, "friends": [str]}
TOWN_CARD_SCHEMA = {"town": str, "region": str, "residents": [str]}


@dataclass(frozen=True)
class CardCheck:
    valid_json: bool
    schema_ok: bool
    true: bool | None  # None when the schema does not match (facts cannot be read)
    errors: tuple[str, ...] = ()


def _schema_errors(value: object, schema: object, where: str) -> list[str]:
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            return [f"{where}: expected an object"]
        if list(value) != list(schema):
            return [f"{where}: keys {list(value)} != schema keys {list(schema)} (order matters)"]
        return [e for key in schema for e in _schema_errors(value[key], schema[key], f"{where}.{key}")]
    if isinstance(schema, list):
        if not isinstance(value, list):
            return [f"{where}: expected an array"]
        return [e for i, v in enumerate(value) for e in _schema_errors(v, schema[0], f"{where}[{i}]")]
    # bool is a subclass of int in Python but not an integer in the schema.
    if not isinstance(value, schema) or isinstance(value, bool):
        return [f"{where}: expected {schema.__name__}, got {type(value).__name__}"]
    return []


def check_card(text: str, kb: KnowledgeBase) -> CardCheck:
    """Valid JSON? Person- or town-card schema, keys in order? Every field true in the KB?

    A card lists *all* friends (or residents), so judge it against the view it describes:
    a training card omits held-out friends and is complete for ``splits.train_kb``.
    """
    try:
        card = json.loads(text)
    except (json.JSONDecodeError, TypeError) as error:
        return CardCheck(False, False, None, (f"invalid JSON: {error}",))
    schema = TOWN_CARD_SCHEMA if isinstance(card, dict) and "town" in card and list(card)[:1] == ["town"] else PERSON_CARD_SCHEMA
    errors = _schema_errors(card, schema, "card")
    if errors:
        return CardCheck(True, False, None, tuple(errors))
    false = [c for c in card_claims(kb, card) if not claim_is_true(kb, c)]
    if schema is TOWN_CARD_SCHEMA and not false and card["residents"] != list(kb.get(card["town"], "residents")):
        false.append(Claim(card["town"], "residents", tuple(card["residents"])))
    if schema is PERSON_CARD_SCHEMA and not false and card["friends"] != list(kb.get(card["name"], "friends")):
        false.append(Claim(card["name"], "friends", tuple(card["friends"])))  # all friends, sorted
    return CardCheck(True, True, not false, tuple(f"false: {c}" for c in false))


# -- ReAct traces ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReactCheck:
    well_formed: bool  # Question, (Thought, Action, Observation)+, Answer; actions parse
    observations_correct: bool  # every Observation is what the tool really returns
    answer_correct: bool
    errors: tuple[str, ...] = ()


_ACTION = re.compile(r"^(?:calculator\[(?P<expr>[^\]]+)\]|lookup\[(?P<entity>[^,\]]+), (?P<attribute>[a-z_]+)\])$")
_CALC_QUESTION = re.compile(r"^What is (?P<expr>[0-9 +*()-]+)\?$")
_PRICE_QUESTION = re.compile(r"^How much do (?P<n>\d+) (?P<items>[a-z]+) cost\?$")
_AGES_QUESTION = re.compile(r"^How old are (?P<a>[A-Z][a-z]+) and (?P<b>[A-Z][a-z]+) together\?$")


def run_action(action: str, kb: KnowledgeBase) -> str:
    """Execute an ``Action:`` body; ValueError if it is not a valid tool call."""
    match = _ACTION.match(action)
    if not match:
        raise ValueError(f"action must be calculator[expression] or lookup[entity, attribute], got {action!r}")
    if match.group("expr") is not None:
        return str(calculator(match.group("expr")))
    return lookup(kb, match.group("entity"), match.group("attribute"))


def react_expected_answer(question: str, kb: KnowledgeBase) -> str | None:
    """The correct final answer to a ReAct question, computed independently of the generator."""
    if (m := _CALC_QUESTION.match(question)) is not None:
        try:
            return str(calculator(m.group("expr")))
        except ValueError:
            return None
    if (m := _PRICE_QUESTION.match(question)) is not None:
        item = next((i for i in kb.items if plural(i) == m.group("items")), None)
        if item is None:
            return None
        total = int(m.group("n")) * kb.get(item, "price")
        return f"{m.group('n')} {m.group('items')} cost {total} coins."
    if (m := _AGES_QUESTION.match(question)) is not None:
        try:
            total = kb.get(m.group("a"), "age") + kb.get(m.group("b"), "age")
        except (KeyError, ValueError):
            return None
        return f"{m.group('a')} and {m.group('b')} are {total} years old together."
    return None


def check_react(text: str, kb: KnowledgeBase) -> ReactCheck:
    """Check a trace's shape, re-run each action to verify its observation, and grade the answer."""
    lines = text.strip("\n").split("\n")
    errors: list[str] = []
    labels = [line.split(":", 1)[0] for line in lines]
    body = [line.split(": ", 1)[1] if ": " in line else "" for line in lines]
    shape = labels[:1] == ["Question"] and labels[-1:] == ["Answer"] and len(labels) >= 5 \
        and (len(labels) - 2) % 3 == 0 \
        and all(labels[1 + 3 * i: 4 + 3 * i] == ["Thought", "Action", "Observation"] for i in range((len(labels) - 2) // 3))
    if not shape:
        errors.append(f"lines must be Question, (Thought, Action, Observation)+, Answer; got {labels}")
    observations_ok = True
    for i, label in enumerate(labels):
        if label == "Action":
            try:
                result = run_action(body[i], kb)
            except ValueError as error:
                errors.append(str(error))
                observations_ok = False
                continue
            seen = body[i + 1] if i + 1 < len(labels) and labels[i + 1] == "Observation" else None
            if seen != result:
                errors.append(f"observation {seen!r} != tool output {result!r} for {body[i]!r}")
                observations_ok = False
    well_formed = shape and not any(e.startswith("action must") for e in errors)
    answer = body[-1] if labels[-1:] == ["Answer"] else ""
    question = body[0] if labels[:1] == ["Question"] else ""
    expected = react_expected_answer(question, kb)
    if expected is not None:
        correct = answer == expected
    elif (parsed := parse_question(question)) is not None:
        correct = check_answer(*parsed, answer, kb)[1]
    else:
        correct = False
        errors.append(f"question not understood: {question!r}")
    return ReactCheck(well_formed, observations_ok and well_formed, correct, tuple(errors))


# -- arithmetic -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ArithmeticCheck:
    parses: bool
    answer_correct: bool
    steps_correct: bool | None  # None for direct answers
    steps_canonical: bool | None  # the exact steps the book's method writes
    errors: tuple[str, ...] = ()


_PROBLEM = re.compile(r"^Compute (?P<a>\d+) (?P<op>[+*]) (?P<b>\d+)(?P<scratch> step by step)?\.$")
_MUL_STEP = re.compile(r"^(\d+) ([*+]) (\d+) = (\d+)$")
_ADD_STEP = re.compile(r"^(\d) \+ (\d) \+ (\d) = (\d+), write (\d), carry (\d)$")
_DIGIT_PRODUCT_STEP = re.compile(r"^(\d) \* (\d) \+ (\d) = (\d+), write (\d), carry (\d)$")


def check_arithmetic(text: str) -> ArithmeticCheck:
    """Grade an arithmetic document: the final answer, and each scratchpad line's arithmetic."""
    lines = text.strip("\n").split("\n")
    problem = _PROBLEM.match(lines[0]) if lines else None
    answer = re.match(r"^Answer: (-?\d+)$", lines[-1]) if lines else None
    if problem is None or answer is None:
        return ArithmeticCheck(False, False, None, None, ("first line must be 'Compute a op b[ step by step].', last 'Answer: n'",))
    a, op, b = int(problem.group("a")), problem.group("op"), int(problem.group("b"))
    truth = a + b if op == "+" else a * b
    correct = int(answer.group(1)) == truth
    if not problem.group("scratch"):
        return ArithmeticCheck(True, correct, None, None, () if len(lines) == 2 else ("direct answers have no steps",))
    steps, errors = lines[1:-1], []
    for step in steps:
        if (m := _ADD_STEP.match(step)) is not None:
            x, y, c, s, w, k = map(int, m.groups())
            ok = x + y + c == s and w == s % 10 and k == s // 10
        elif (m := _DIGIT_PRODUCT_STEP.match(step)) is not None:
            x, y, c, s, w, k = map(int, m.groups())
            ok = x * y + c == s and w == s % 10 and k == s // 10
        elif (m := _MUL_STEP.match(step)) is not None:
            x, sym, y, z = m.groups()
            ok = (int(x) * int(y) if sym == "*" else int(x) + int(y)) == int(z)
        else:
            ok = False
        if not ok:
            errors.append(f"wrong step: {step!r}")
    canonical = steps == scratchpad_lines(a, op, b)
    return ArithmeticCheck(True, correct, not errors and bool(steps), canonical, tuple(errors))


# -- retrieval -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RetrievalCheck:
    parses: bool
    answer_correct: bool
    answer_index: int | None = None  # which record the question asks about (0-based)


_RECORD = re.compile(r"^(\d+)\. ([A-Z][a-z]+): (.+)$")


def check_retrieval(text: str) -> RetrievalCheck:
    """Is the answer the value of the asked-about record *in the text* (in-context retrieval)?"""
    lines = text.strip("\n").split("\n")
    header = re.match(r"^Records of ([a-z ]+):$", lines[0]) if lines else None
    records = [_RECORD.match(line) for line in lines[1:-2]]
    question = re.match(r"^Question: What is the ([a-z ]+) of ([A-Z][a-z]+)\?$", lines[-2]) if len(lines) >= 3 else None
    answer = re.match(r"^Answer: (.+)$", lines[-1]) if lines else None
    if header is None or question is None or answer is None or not records or not all(records) \
            or question.group(1) != header.group(1):
        return RetrievalCheck(False, False)
    values = {m.group(2): (i, m.group(3)) for i, m in enumerate(records)}
    if question.group(2) not in values:
        return RetrievalCheck(True, False)
    index, value = values[question.group(2)]
    return RetrievalCheck(True, answer.group(1) == value, index)


# -- one verdict per document -----------------------------------------------------------------------
def document_is_correct(text: str, family: str, kb: KnowledgeBase) -> bool:
    """True when a document of ``family`` parses completely and everything it states is true."""
    if family in ("story", "fact"):
        checks = check_statements(text, kb)
        return bool(checks) and all(c.parses and c.true is not False for c in checks)
    if family == "qa":
        pairs = [p for p in text.split("\n\n") if p.strip()]
        return bool(pairs) and all(check_qa(p, kb).correct for p in pairs)
    if family == "card":
        return check_card(text, kb).true is True
    if family == "react":
        result = check_react(text, kb)
        return result.well_formed and result.observations_correct and result.answer_correct
    if family == "arithmetic":
        result = check_arithmetic(text)
        return result.answer_correct and result.steps_correct is not False and result.steps_canonical is not False
    if family == "retrieval":
        return check_retrieval(text).answer_correct
    raise ValueError(f"family must be one of {sorted(FAMILIES)}, got {family!r}")
