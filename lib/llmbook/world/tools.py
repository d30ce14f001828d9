"""The two tools of TinyWorld's ReAct traces, executed for real.

``calculator`` evaluates integer arithmetic (``+ - *``, parentheses, unary minus) with a
small recursive-descent parser, never ``eval``; ``lookup`` reads the knowledge base. The
observations in generated traces are these functions' outputs, and the checkers re-run
them to verify a model's traces.
"""

from __future__ import annotations

import re

from .entities import KnowledgeBase

_TOKEN = re.compile(r"\s*(\d+|[-+*()])")
UNKNOWN = "unknown"
MAX_EXPRESSION_CHARS = 200


def calculator(expression: str) -> int:
    """Value of an integer expression, e.g. ``calculator("3 * (4 + 5)") -> 27``.

    ValueError for anything that is not such an expression (letters, division, bad syntax).
    """
    if not isinstance(expression, str) or not expression.strip() or len(expression) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression must be a non-empty str of at most {MAX_EXPRESSION_CHARS} characters")
    tokens, position = [], 0
    while position < len(expression):
        match = _TOKEN.match(expression, position)
        if not match:
            if expression[position:].strip() == "":
                break
            raise ValueError(f"expression has an unexpected character at {position}: {expression!r}")
        tokens.append(match.group(1))
        position = match.end()
    parser = _Parser(tokens)
    value = parser.sum()
    if parser.position != len(tokens):
        raise ValueError(f"expression has trailing tokens: {expression!r}")
    return value


class _Parser:
    """sum := product (('+'|'-') product)*; product := unary ('*' unary)*; unary := '-' unary | atom."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens, self.position = tokens, 0

    def _peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def _take(self) -> str:
        token = self._peek()
        if token is None:
            raise ValueError("expression ends too early")
        self.position += 1
        return token

    def sum(self) -> int:
        value = self.product()
        while self._peek() in ("+", "-"):
            value = value + self.product() if self._take() == "+" else value - self.product()
        return value

    def product(self) -> int:
        value = self.unary()
        while self._peek() == "*":
            self._take()
            value *= self.unary()
        return value

    def unary(self) -> int:
        if self._peek() == "-":
            self._take()
            return -self.unary()
        token = self._take()
        if token == "(":
            value = self.sum()
            if self._take() != ")":
                raise ValueError("expression has an unclosed parenthesis")
            return value
        if not token.isdigit():
            raise ValueError(f"expression expected a number, got {token!r}")
        return int(token)


def lookup(kb: KnowledgeBase, entity: str, attribute: str) -> str:
    """A fact as the lookup tool prints it: ``"Tolbury"``, ``"34"``, ``"Tobo, Lenka"``.

    Unknown entities, attributes and hidden facts give ``"unknown"`` (a tool answers, it
    does not crash the agent).
    """
    try:
        value = kb.get(entity, attribute)
    except (KeyError, ValueError):
        return UNKNOWN
    if isinstance(value, tuple):
        return ", ".join(value) if value else "none"
    return str(value)
