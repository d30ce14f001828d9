"""Grammar-constrained decoding: JSON and a JSON-Schema subset, as token masks over bytes.

The chapter *Constrained decoding* (``book/04_constrained_decoding.md``) explains this module.

**Grammar.** A context-free grammar whose terminals are *bytes*: each rule is a regular
expression over byte classes and references to other rules (EBNF), compiled to a small
nondeterministic automaton (Thompson's construction). A reference is a call: running the
grammar means keeping a *stack* of return positions, i.e. a pushdown automaton. Because
the automaton may be nondeterministic (an optional property, a number that may or may not
go on), its state is a *set* of stacks, as in XGrammar's persistent stack tree
(Dong et al. 2024, "XGrammar: flexible and efficient structured generation engine for
large language models", arXiv:2411.15100). Working on bytes makes the grammar independent
of the tokenizer: any tokenizer whose tokens are byte strings (byte-level BPE such as
TinyWorld's and SmolLM2's, or SentencePiece with byte fallback) can be constrained.

**Token masks.** A token is allowed when the automaton can consume all of its bytes. The
plain way (``cache=False``) walks the tokenizer's byte trie from the current state at every
step, pruning a subtree as soon as its prefix is rejected. XGrammar's observation makes it
fast: for most tokens the answer depends only on the *top* of the stack (the position in
the current rule), not on what lies below it. For each automaton node the vocabulary splits
into tokens accepted there whatever the context, tokens rejected whatever the context, and
*context-dependent* tokens, which finish the current rule part-way and need the stack below
to decide (``'",'`` inside a string). :class:`MaskCache` computes that split once per node;
at run time only the context-dependent tokens are checked against the real stack.

**Schemas.** :meth:`Grammar.from_json_schema` supports objects (``properties``, ``required``,
``additionalProperties: false``), the types string/integer/number/boolean/null, ``enum``,
``const``, ``anyOf``, arrays (``items``, ``minItems``, ``maxItems``) and integer
``minimum``/``maximum``/``exclusiveMinimum``/``exclusiveMaximum``, nested freely. Any other
keyword that constrains a value raises ``ValueError`` naming it; annotations (``title``,
``description`` ...) are allowed. Output is one line with fixed separators (``", "`` and
``": "`` by default: what ``json.dumps`` writes), properties in the schema's order, optional
ones skippable: the configuration the parity tests give XGrammar (``any_whitespace=False``)
and llguidance (``whitespace_flexible: false``).

**Engines.** ``grammar_constraint(..., engine="xgrammar")`` (``generate(..., grammar_engine=)``)
runs the same schema on XGrammar, the production engine (a dev dependency, imported only then),
behind the same interface; the parity tests compare both engines' masks, and llguidance's.

**Not** sampling from the model conditioned on valid output: the mask is applied step by step,
so p~(x_t | x_<t) is proportional to p(x_t | x_<t) 1[x_t allowed], which ignores how likely a
valid *completion* is after x_t (Park et al. 2024, "Grammar-aligned decoding",
arXiv:2405.21047). The chapter measures the difference.
"""

from __future__ import annotations

import json
import math
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import torch

from llmbook.tokenizer import Tokenizer

__all__ = [
    "Grammar", "TokenVocabulary", "MaskCache", "GrammarMatcher", "CacheStats",
    "lit", "chars", "seq", "alt", "star", "plus", "opt", "rep", "ref",
    "json_schema_grammar", "json_grammar", "closed_objects", "vocabulary", "grammar_constraint",
    "ENGINES", "XGrammarConstraint", "xgrammar_compile",
]

# ---------------------------------------------------------------------------------- expressions
# A rule's body is a tree of tuples: ("bytes", frozenset[int]) one byte of a class;
# ("seq", (e, ...)); ("alt", (e, ...)); ("star", e); ("ref", name). Helpers build them.
Expr = tuple


def chars(spec: str | bytes | Iterable[int], *, negate: bool = False) -> Expr:
    """One byte of a class: ``chars("0-9")``, ``chars(b'"\\\\', negate=True)`` (ranges with ``-``)."""
    if isinstance(spec, str):
        spec = spec.encode("latin-1")
    if isinstance(spec, bytes):
        values: set[int] = set()
        i = 0
        while i < len(spec):
            if i + 2 < len(spec) and spec[i + 1] == ord("-"):
                values.update(range(spec[i], spec[i + 2] + 1))
                i += 3
            else:
                values.add(spec[i])
                i += 1
    else:
        values = {int(v) for v in spec}
    if negate:
        values = set(range(256)) - values
    if not values:
        raise ValueError("chars: the byte class is empty")
    return ("bytes", frozenset(values))


def lit(text: str | bytes) -> Expr:
    """A literal: its UTF-8 bytes in order (the empty literal matches the empty string)."""
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    return ("seq", tuple(("bytes", frozenset([b])) for b in data))


def seq(*items: Expr) -> Expr:
    return ("seq", tuple(items))


def alt(*items: Expr) -> Expr:
    if not items:
        raise ValueError("alt needs at least one alternative")
    return ("alt", tuple(items))


def star(item: Expr) -> Expr:
    return ("star", item)


def plus(item: Expr) -> Expr:
    return seq(item, star(item))


def opt(item: Expr) -> Expr:
    return alt(item, seq())


def rep(item: Expr, low: int, high: int | None) -> Expr:
    """``item`` repeated ``low`` to ``high`` times (``high=None``: unbounded)."""
    if high is not None and high < low:
        raise ValueError(f"rep: high ({high}) must be >= low ({low})")
    parts = [item] * low
    if high is None:
        parts.append(star(item))
    else:
        # Nested optionals (a (a (a)?)?)? keep the automaton deterministic-ish and small.
        tail: Expr = seq()
        for _ in range(high - low):
            tail = opt(seq(item, tail))
        parts.append(tail)
    return seq(*parts)


def ref(name: str) -> Expr:
    return ("ref", name)


# ---------------------------------------------------------------------------------- the grammar
_DEAD = -1


def _references(e: Expr) -> list[str]:
    """The rule names an expression calls."""
    if e[0] == "ref":
        return [e[1]]
    if e[0] in ("seq", "alt"):
        return [name for item in e[1] for name in _references(item)]
    if e[0] == "star":
        return _references(e[1])
    return []


class Grammar:
    """A byte-level context-free grammar: ``rules`` maps a name to an expression; ``root`` is the start.

    Compiled at construction into one automaton: nodes are global ints, each belonging to one
    rule; a node has byte edges (``byte -> targets``), call edges (``(rule, return node)``) and
    epsilon edges; each rule has one start and one final node. Left recursion is rejected (a
    rule that can call itself before consuming a byte would push forever), and so is a grammar
    whose root matches no string at all.
    """

    def __init__(self, rules: Mapping[str, Expr], root: str) -> None:
        if root not in rules:
            raise ValueError(f"root {root!r} is not one of the rules")
        for name, body in rules.items():
            for target in _references(body):
                if target not in rules:
                    raise ValueError(f"rule {name!r} refers to {target!r}, which is not a rule")
        # Compile only the rules the root reaches (a schema without booleans leaves the boolean
        # rule unused; compiled, it would count in the mask cache).
        reached, todo = {root}, [root]
        while todo:
            for target in _references(rules[todo.pop()]):
                if target not in reached:
                    reached.add(target)
                    todo.append(target)
        self.rules = {name: body for name, body in rules.items() if name in reached}
        self.root = root
        self.rule_names: list[str] = list(self.rules)
        self._rule_index = {name: i for i, name in enumerate(self.rule_names)}
        self.node_rule: list[int] = []
        self._byte: list[dict[int, list[int]]] = []
        self._calls: list[list[tuple[int, int]]] = []
        self._eps: list[list[int]] = []
        self.rule_start: list[int] = []
        self.rule_final: list[int] = []
        for i, name in enumerate(self.rule_names):
            start, final = self._new(i), self._new(i)
            self.rule_start.append(start)
            self.rule_final.append(final)
            self._build(self.rules[name], start, final, i, name)
        self._closure = [self._eps_closure(n) for n in range(len(self.node_rule))]
        self.byte_edges: list[dict[int, tuple[int, ...]]] = [
            {b: tuple(t) for b, t in edges.items()} for edges in self._byte
        ]
        self._check_left_recursion()
        self._check_productive()
        # Interned states: (frozenset of stacks, bottom popped) <-> id; transitions memoized.
        self._state_id: dict[tuple[frozenset, bool], int] = {}
        self.states: list[tuple[frozenset, bool]] = []
        self._next: list[dict[int, int]] = []

    # -- construction -----------------------------------------------------------------------
    def _new(self, rule: int) -> int:
        self.node_rule.append(rule)
        self._byte.append({})
        self._calls.append([])
        self._eps.append([])
        return len(self.node_rule) - 1

    def _build(self, e: Expr, a: int, b: int, rule: int, name: str) -> None:
        kind = e[0]
        if kind == "bytes":
            for v in e[1]:
                self._byte[a].setdefault(v, []).append(b)
        elif kind == "seq":
            items = e[1]
            if not items:
                self._eps[a].append(b)
                return
            cur = a
            for k, item in enumerate(items):
                nxt = b if k == len(items) - 1 else self._new(rule)
                self._build(item, cur, nxt, rule, name)
                cur = nxt
        elif kind == "alt":
            for item in e[1]:
                s, f = self._new(rule), self._new(rule)
                self._eps[a].append(s)
                self._eps[f].append(b)
                self._build(item, s, f, rule, name)
        elif kind == "star":
            s, f = self._new(rule), self._new(rule)
            self._eps[a] += [s, b]
            self._eps[f] += [s, b]
            self._build(e[1], s, f, rule, name)
        elif kind == "ref":
            if e[1] not in self._rule_index:
                raise ValueError(f"rule {name!r} refers to {e[1]!r}, which is not a rule")
            self._calls[a].append((self._rule_index[e[1]], b))
        else:
            raise ValueError(f"rule {name!r}: unknown expression kind {kind!r}")

    def _eps_closure(self, n: int) -> tuple[int, ...]:
        seen, todo = {n}, [n]
        while todo:
            for m in self._eps[todo.pop()]:
                if m not in seen:
                    seen.add(m)
                    todo.append(m)
        # Only nodes that do something: consume a byte, call a rule, or finish the rule.
        return tuple(sorted(m for m in seen if self._byte[m] or self._calls[m]
                            or m == self.rule_final[self.node_rule[m]]))

    def _reachable(self, start: int, callable_rules: set[int], *, consume: bool) -> tuple[set[int], set[int]]:
        """Nodes reachable from ``start`` by epsilon edges, calls to ``callable_rules`` (stepping over
        them to the return node) and, when ``consume``, byte edges; and the rules called on the way."""
        seen, todo, called = set(), [start], set()
        while todo:
            n = todo.pop()
            if n in seen:
                continue
            seen.add(n)
            todo += self._eps[n]
            if consume:
                for targets in self._byte[n].values():
                    todo += targets
            for callee, ret in self._calls[n]:
                called.add(callee)
                if callee in callable_rules:
                    todo.append(ret)
        return seen, called

    def _fixpoint(self, consume: bool) -> set[int]:
        """Rules that can finish: without a byte (nullable) or at all (productive), by iteration."""
        done: set[int] = set()
        changed = True
        while changed:
            changed = False
            for r in range(len(self.rule_names)):
                if r not in done and self.rule_final[r] in self._reachable(self.rule_start[r], done,
                                                                           consume=consume)[0]:
                    done.add(r)
                    changed = True
        return done

    def _check_left_recursion(self) -> None:
        nullable = self._fixpoint(consume=False)
        # Rules each rule can call before consuming a byte; a cycle among them is left recursion.
        first = {r: self._reachable(self.rule_start[r], nullable, consume=False)[1]
                 for r in range(len(self.rule_names))}
        for r in first:
            seen, todo = set(), list(first[r])
            while todo:
                c = todo.pop()
                if c == r:
                    raise ValueError(f"rule {self.rule_names[r]!r} is left-recursive "
                                     "(it can call itself before consuming a byte)")
                if c not in seen:
                    seen.add(c)
                    todo += first[c]

    def _check_productive(self) -> None:
        if self._rule_index[self.root] not in self._fixpoint(consume=True):
            raise ValueError(f"the grammar matches no string at all (rule {self.root!r} cannot finish)")

    # -- running: states are sets of stacks -----------------------------------------------------
    def _close(self, stack: tuple[int, ...], out: set, seen: set) -> bool:
        """Add to ``out`` every byte-ready stack reachable from ``stack`` without consuming a byte.

        The top of ``stack`` is a node not yet closed. Returns True when the bottom rule can
        finish here (the root: the text so far is a complete sentence).
        """
        popped = False
        todo = [stack]
        while todo:
            s = todo.pop()
            below = s[:-1]
            for m in self._closure[s[-1]]:
                if self.byte_edges[m]:
                    out.add(below + (m,))
                for callee, ret in self._calls[m]:
                    pushed = below + (ret, self.rule_start[callee])
                    if pushed not in seen:
                        seen.add(pushed)
                        todo.append(pushed)
                if m == self.rule_final[self.node_rule[m]]:
                    if not below:
                        popped = True
                    elif below not in seen:  # return to the caller's return node
                        seen.add(below)
                        todo.append(below)
        return popped

    def _intern(self, stacks: frozenset, popped: bool) -> int:
        key = (stacks, popped)
        sid = self._state_id.get(key)
        if sid is None:
            sid = len(self.states)
            self._state_id[key] = sid
            self.states.append(key)
            self._next.append({})
        return sid

    def start_state(self, node: int | None = None) -> int:
        """The state before any byte: at the root's start, or (for the mask cache) at ``node`` alone."""
        out: set = set()
        if node is None:
            popped = self._close((self.rule_start[self._rule_index[self.root]],), out, set())
        else:
            out.add((node,))
            popped = False
        return self._intern(frozenset(out), popped)

    def state_for_stack(self, stack: tuple[int, ...]) -> int:
        return self._intern(frozenset([stack]), False)

    def step(self, sid: int, byte: int) -> int:
        """The state after one more byte (``-1``: no stack can take it). Memoized."""
        nxt = self._next[sid].get(byte)
        if nxt is None:
            nxt = self._step_uncached(sid, byte)
            self._next[sid][byte] = nxt
        return nxt

    def _step_uncached(self, sid: int, byte: int) -> int:
        stacks, _ = self.states[sid]
        out: set = set()
        popped = False
        seen: set = set()
        for s in stacks:
            for target in self.byte_edges[s[-1]].get(byte, ()):
                popped |= self._close(s[:-1] + (target,), out, seen)
        if not out and not popped:
            return _DEAD
        return self._intern(frozenset(out), popped)

    def step_bytes(self, sid: int, data: bytes) -> int:
        for b in data:
            if sid == _DEAD:
                return _DEAD
            sid = self.step(sid, b)
        return sid

    def is_accepting(self, sid: int) -> bool:
        """At a root state: is the text so far a complete sentence of the grammar?"""
        return sid != _DEAD and self.states[sid][1]

    def accepts(self, text: str | bytes) -> bool:
        """Is ``text`` (str as UTF-8, or bytes) a complete sentence of the grammar?"""
        data = text.encode("utf-8") if isinstance(text, str) else text
        return self.is_accepting(self.step_bytes(self.start_state(), data))

    def accepts_prefix(self, text: str | bytes) -> bool:
        """Can ``text`` be continued into a sentence of the grammar?"""
        data = text.encode("utf-8") if isinstance(text, str) else text
        return self.step_bytes(self.start_state(), data) != _DEAD

    def describe_stack(self, stack: tuple[int, ...]) -> list[str]:
        """The rule names on ``stack``, bottom first (what the automaton is inside of)."""
        return [self.rule_names[self.node_rule[n]] for n in stack]

    @property
    def num_nodes(self) -> int:
        return len(self.node_rule)

    def __repr__(self) -> str:
        return f"Grammar(root={self.root!r}, rules={len(self.rules)}, nodes={self.num_nodes})"


# ---------------------------------------------------------------------------------- JSON
_WS = b" \t\n\r"


def _utf8_char(exclude_ascii: bytes) -> Expr:
    """One UTF-8 encoded character (RFC 3629: no overlong forms, no surrogates) outside
    ``exclude_ascii`` and the control characters U+0000-U+001F."""
    ascii_ok = [b for b in range(0x20, 0x80) if b not in exclude_ascii]
    cont = chars(range(0x80, 0xC0))
    return alt(
        chars(ascii_ok),
        seq(chars(range(0xC2, 0xE0)), cont),
        seq(chars([0xE0]), chars(range(0xA0, 0xC0)), cont),
        seq(chars(list(range(0xE1, 0xED)) + [0xEE, 0xEF]), cont, cont),
        seq(chars([0xED]), chars(range(0x80, 0xA0)), cont),
        seq(chars([0xF0]), chars(range(0x90, 0xC0)), cont, cont),
        seq(chars(range(0xF1, 0xF4)), cont, cont, cont),
        seq(chars([0xF4]), chars(range(0x80, 0x90)), cont, cont),
    )


def _string_body() -> Expr:
    escape = alt(chars(b'"\\/bfnrt'), seq(lit("u"), *[chars(b"0-9a-fA-F")] * 4))
    return star(alt(_utf8_char(b'"\\'), seq(lit("\\"), escape)))


_DIGITS = chars(b"0-9")
# "-0" is JSON but not a distinct integer; XGrammar refuses it, and so does this grammar.
_INT_SYNTAX = alt(lit("0"), seq(opt(lit("-")), chars(b"1-9"), star(_DIGITS)))
_NUMBER_INT = seq(opt(lit("-")), alt(lit("0"), seq(chars(b"1-9"), star(_DIGITS))))
_FRACTION_EXP = seq(opt(seq(lit("."), plus(_DIGITS))),
                    opt(seq(chars(b"eE"), opt(chars(b"+-")), plus(_DIGITS))))


def _common_rules() -> dict[str, Expr]:
    return {
        "string": seq(lit('"'), _string_body(), lit('"')),
        "integer": _INT_SYNTAX,
        "number": seq(_NUMBER_INT, _FRACTION_EXP),
        "boolean": alt(lit("true"), lit("false")),
        "null": lit("null"),
    }


def json_grammar(*, separators: tuple[str, str] | None = (", ", ": ")) -> Grammar:
    """Any JSON value (RFC 8259). ``separators=(item, key)`` fixes the text between items and
    between a key and its value (one line, like ``json.dumps``); ``separators=None`` allows
    any JSON whitespace around every token instead (so pretty-printed output too)."""
    rules = _common_rules()
    if separators is None:
        ws = star(chars(_WS))
        item_sep, key_sep, open_ws = seq(ws, lit(","), ws), seq(ws, lit(":"), ws), ws
    else:
        item_sep, key_sep = _separators(separators)
        open_ws = seq()
    value = ref("value")
    member = seq(ref("string"), key_sep, value)
    rules["object"] = seq(lit("{"), open_ws, opt(seq(member, star(seq(item_sep, member)), open_ws)),
                          lit("}"))
    rules["array"] = seq(lit("["), open_ws, opt(seq(value, star(seq(item_sep, value)), open_ws)),
                         lit("]"))
    rules["value"] = alt(ref("object"), ref("array"), ref("string"), ref("number"), ref("boolean"),
                         ref("null"))
    rules["json"] = seq(open_ws, value, open_ws)
    return Grammar(rules, "json")


def _separators(separators: tuple[str, str]) -> tuple[Expr, Expr]:
    if (not isinstance(separators, tuple) or len(separators) != 2
            or not all(isinstance(s, str) for s in separators)):
        raise ValueError(f"separators must be a pair of strings (item, key) or None, got {separators!r}")
    item, key = separators
    if item.strip() != "," or key.strip() != ":" or any(c not in " \t\n\r,:" for c in item + key):
        raise ValueError(f"separators must be ',' and ':' with JSON whitespace around them, got {separators!r}")
    return lit(item), lit(key)


# -- JSON Schema subset -------------------------------------------------------------------------
_ANNOTATIONS = frozenset({"title", "description", "$schema", "$id", "$comment", "default", "examples",
                          "readOnly", "writeOnly", "deprecated"})
_SUPPORTED = {
    "object": {"type", "properties", "required", "additionalProperties"},
    "array": {"type", "items", "minItems", "maxItems"},
    "string": {"type"},
    "integer": {"type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"},
    "number": {"type"},
    "boolean": {"type"},
    "null": {"type"},
}
_TYPES = tuple(_SUPPORTED)


class _SchemaCompiler:
    def __init__(self, separators: tuple[str, str]) -> None:
        self.item_sep, self.key_sep = _separators(separators)
        self.separators = separators
        self.rules: dict[str, Expr] = _common_rules()
        self._used_common: set[str] = set()

    def fail(self, where: str, message: str) -> ValueError:
        return ValueError(f"json_schema at {where or '#'}: {message}")

    def compile(self, schema: Any, where: str, name: str) -> Expr:
        if schema is True or schema == {}:
            raise self.fail(where, "an empty schema ({} or true) allows any JSON value; constrain it, "
                                   "or use grammar='json' for any JSON")
        if schema is False:
            raise self.fail(where, "the schema false admits no value")
        if not isinstance(schema, Mapping):
            raise self.fail(where, f"a schema must be an object, got {type(schema).__name__}")
        for key in schema:
            if not isinstance(key, str):
                raise self.fail(where, f"schema keys must be strings, got {key!r}")
        keys = set(schema) - _ANNOTATIONS
        if "enum" in keys or "const" in keys:
            if "enum" in keys and "const" in keys:
                raise self.fail(where, "use enum or const, not both")
            if keys - {"enum", "const", "type"}:
                raise self.fail(where, f"keywords {sorted(keys - {'enum', 'const', 'type'})} next to "
                                       "enum/const are not supported")
            values = [schema["const"]] if "const" in keys else schema["enum"]
            if not isinstance(values, list) or not values:
                raise self.fail(where, "enum must be a non-empty list")
            if "type" in keys:
                values = [v for v in values if _json_type_matches(v, schema["type"])]
                if not values:
                    raise self.fail(where, f"no enum/const value has type {schema['type']!r}")
            texts = []
            for v in values:
                text = self.dumps(v, where)
                if text not in texts:
                    texts.append(text)
            return alt(*[lit(t) for t in texts])
        if "anyOf" in keys:
            if keys != {"anyOf"}:
                raise self.fail(where, f"keywords {sorted(keys - {'anyOf'})} next to anyOf are not supported")
            options = schema["anyOf"]
            if not isinstance(options, list) or not options:
                raise self.fail(where, "anyOf must be a non-empty list of schemas")
            return alt(*[self.compile(s, f"{where}/anyOf/{i}", f"{name}|{i}") for i, s in enumerate(options)])
        if "type" not in keys:
            unknown = sorted(keys)
            raise self.fail(where, f"needs a type, enum, const or anyOf (got keywords {unknown})")
        types = schema["type"]
        if isinstance(types, list):
            if not types or not all(t in _TYPES for t in types):
                raise self.fail(where, f"type must be one of {list(_TYPES)} or a list of them, got {types!r}")
            if len(types) > 1:
                if keys != {"type"}:
                    raise self.fail(where, "a list of types is supported only without other keywords")
                return alt(*[self.compile({"type": t}, where, name) for t in types])
            types = types[0]
        if types not in _TYPES:
            raise self.fail(where, f"type must be one of {list(_TYPES)}, got {types!r}")
        unsupported = keys - _SUPPORTED[types]
        if unsupported:
            raise self.fail(where, f"unsupported keyword {sorted(unsupported)[0]!r} for type {types!r} "
                                   f"(supported: {sorted(_SUPPORTED[types] - {'type'}) or 'none'}); "
                                   "it is not ignored, so this schema cannot be compiled")
        if types == "object":
            return self.object(schema, where, name)
        if types == "array":
            return self.array(schema, where, name)
        if types == "integer" and keys & {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}:
            return self.integer_range(schema, where)
        return ref(types)

    def dumps(self, value: Any, where: str) -> str:
        try:
            text = json.dumps(value, ensure_ascii=False, separators=self.separators, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise self.fail(where, f"enum/const value {value!r} is not JSON: {err}") from None
        return text

    def object(self, schema: Mapping, where: str, name: str) -> Expr:
        props = schema.get("properties", {})
        if not isinstance(props, Mapping):
            raise self.fail(where, "properties must be an object")
        required = schema.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise self.fail(where, "required must be a list of property names")
        missing = [r for r in required if r not in props]
        if missing:
            raise self.fail(where, f"required property {missing[0]!r} is not in properties "
                                   "(additional properties are not allowed, so it could never be written)")
        extra = schema.get("additionalProperties", False)
        if extra is not False:
            raise self.fail(where, "additionalProperties must be false or absent (objects admit only their "
                                   f"listed properties); got {extra!r}")
        members = []
        for key, sub in props.items():
            value = self.compile(sub, f"{where}/properties/{key}", f"{name}.{key}")
            members.append((seq(lit(json.dumps(key, ensure_ascii=False)), self.key_sep, value), key in required))
        if not members:
            return lit("{}")
        # Properties in schema order; an optional one may be left out. The first written member has
        # no separator before it, so branch on which member comes first (all before it optional).
        body_options = []
        for first in range(len(members)):
            rest = [seq(self.item_sep, m) if req else opt(seq(self.item_sep, m))
                    for m, req in members[first + 1:]]
            body_options.append(seq(members[first][0], *rest))
            if members[first][1]:
                break
        else:
            body_options.append(seq())  # every property optional: {} too
        rule = f"object {name}"
        self.rules[rule] = seq(lit("{"), alt(*body_options), lit("}"))
        return ref(rule)

    def array(self, schema: Mapping, where: str, name: str) -> Expr:
        if "items" not in schema:
            raise self.fail(where, "an array needs an items schema (any JSON item is not supported)")
        low = schema.get("minItems", 0)
        high = schema.get("maxItems")
        for key, v in (("minItems", low), ("maxItems", high)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise self.fail(where, f"{key} must be an integer >= 0, got {v!r}")
        if high is not None and high < low:
            raise self.fail(where, f"minItems ({low}) > maxItems ({high}): no array satisfies both")
        item = self.compile(schema["items"], f"{where}/items", f"{name}[]")
        rule = f"array {name}"
        if high == 0:
            body: Expr = seq()
        elif low == 0:
            body = opt(seq(item, rep(seq(self.item_sep, item), 0, None if high is None else high - 1)))
        else:
            body = seq(item, rep(seq(self.item_sep, item), low - 1, None if high is None else high - 1))
        self.rules[rule] = seq(lit("["), body, lit("]"))
        return ref(rule)

    def integer_range(self, schema: Mapping, where: str) -> Expr:
        low, high = None, None
        for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            v = schema.get(key)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise self.fail(where, f"{key} must be a finite number, got {v!r}")
            if key == "minimum":
                bound = math.ceil(v)
            elif key == "exclusiveMinimum":
                bound = math.floor(v) + 1
            elif key == "maximum":
                bound = math.floor(v)
            else:
                bound = math.ceil(v) - 1
            if key.endswith("inimum"):
                low = bound if low is None else max(low, bound)
            else:
                high = bound if high is None else min(high, bound)
        if low is not None and high is not None and low > high:
            raise self.fail(where, f"no integer lies in [{low}, {high}] (minimum > maximum)")
        return integer_range(low, high)


def _json_type_matches(value: Any, types: Any) -> bool:
    names = types if isinstance(types, list) else [types]
    kinds = {"string": isinstance(value, str), "boolean": isinstance(value, bool), "null": value is None,
             "integer": isinstance(value, int) and not isinstance(value, bool),
             "number": isinstance(value, (int, float)) and not isinstance(value, bool),
             "object": isinstance(value, dict), "array": isinstance(value, list)}
    return any(kinds.get(t, False) for t in names)


def _digits_between(a: str, b: str) -> Expr:
    """Decimal strings of len(a) == len(b) digits from a to b (a <= b), by the first differing digit."""
    if not a:
        return seq()
    if a[0] == b[0]:
        return seq(lit(a[0]), _digits_between(a[1:], b[1:]))
    rest = len(a) - 1
    parts = [seq(lit(a[0]), _digits_between(a[1:], "9" * rest))]
    if int(a[0]) + 1 <= int(b[0]) - 1:
        parts.append(seq(chars(f"{int(a[0]) + 1}-{int(b[0]) - 1}"), *[_DIGITS] * rest))
    parts.append(seq(lit(b[0]), _digits_between("0" * rest, b[1:])))
    return alt(*parts)


def _naturals(low: int, high: int | None) -> Expr:
    """Canonical decimals (no leading zero) of the integers in [low, high], low >= 0; high None: no limit."""
    parts = []
    length = len(str(low))
    while high is None or length <= len(str(high)):
        lo = max(low, 10 ** (length - 1) if length > 1 else 0)
        if high is None and lo == 10 ** (length - 1) and length > 1:
            parts.append(seq(chars(b"1-9"), rep(_DIGITS, length - 1, None)))
            break
        hi = 10 ** length - 1 if high is None or length < len(str(high)) else high
        parts.append(_digits_between(str(lo), str(hi)))
        length += 1
    return alt(*parts)


def integer_range(low: int | None, high: int | None) -> Expr:
    """The canonical JSON integers n with low <= n <= high (None: unbounded on that side)."""
    parts = []
    if low is None or low < 0:  # negatives -1 .. low, written '-' + magnitude 1 .. -low
        top = None if low is None else -low
        bottom = 1 if high is None or high >= 0 else -high
        if top is None or bottom <= top:
            parts.append(seq(lit("-"), _naturals(bottom, top)))
    if high is None or high >= 0:
        parts.append(_naturals(max(low or 0, 0), high))
    return alt(*parts)


def closed_objects(schema: Any) -> Any:
    """A copy of ``schema`` with ``additionalProperties: false`` written on every object that lists
    properties: what this module assumes when it is absent. JSON Schema's own default (and
    llguidance's) is ``true``; pass this to such an engine to compile the same language."""
    if isinstance(schema, list):
        return [closed_objects(s) for s in schema]
    if not isinstance(schema, Mapping):
        return schema
    out = {k: closed_objects(v) if k in ("items", "anyOf") else v for k, v in schema.items()}
    if "properties" in schema:
        out["properties"] = {k: closed_objects(v) for k, v in schema["properties"].items()}
        out.setdefault("additionalProperties", False)
    return out


def json_schema_grammar(schema: Mapping[str, Any], *, separators: tuple[str, str] = (", ", ": ")) -> Grammar:
    """The grammar of the one-line JSON texts that satisfy ``schema`` (the subset in the module docstring).

    Raises ``ValueError`` naming the keyword and its JSON pointer for anything unsupported or
    unsatisfiable (``minItems > maxItems``, an empty enum, a required property that is not listed).
    """
    compiler = _SchemaCompiler(separators)
    root = compiler.compile(schema, "#", "root")
    compiler.rules["root"] = root
    return Grammar(compiler.rules, "root")


Grammar.json = staticmethod(json_grammar)  # type: ignore[attr-defined]
Grammar.from_json_schema = staticmethod(json_schema_grammar)  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------- vocabulary
class TokenVocabulary:
    """A tokenizer's tokens as byte strings, in a trie flattened to pre-order arrays.

    ``node_byte[i]``, ``node_depth[i]`` (1 = a token's first byte), ``node_tokens[i]`` (ids whose
    bytes end at node i), ``node_skip[i]`` (the index after node i's subtree). Special tokens
    (BOS, EOS, chat markers) are not text: they are left out of the trie; the matcher allows an
    EOS id only where the grammar is complete. ``size`` is the model's vocabulary (ids beyond the
    tokenizer's are never allowed).
    """

    def __init__(self, tokenizer: Tokenizer, size: int | None = None) -> None:
        if not isinstance(tokenizer, Tokenizer):
            raise ValueError(f"tokenizer must be a llmbook Tokenizer, got {type(tokenizer).__name__}")
        n = tokenizer.vocab_size
        self.size = n if size is None else int(size)
        if self.size < n:
            raise ValueError(f"size ({self.size}) must be >= the tokenizer's vocabulary ({n})")
        skip = set(tokenizer.special_ids) | set(tokenizer.unassigned_ids)
        self.token_bytes: dict[int, bytes] = {}
        try:
            for i in range(n):
                if i not in skip:
                    data = tokenizer.token_bytes(i)
                    if data:
                        self.token_bytes[i] = data
        except ValueError as err:
            raise ValueError("constrained decoding needs a tokenizer whose tokens are byte strings "
                             f"(byte-level BPE, or SentencePiece with byte fallback): {err}") from None
        self.special_ids = frozenset(skip)
        self.eos_token_id = tokenizer.eos_token_id
        trie: dict = {}
        for i, data in self.token_bytes.items():
            node = trie
            for b in data:
                node = node.setdefault(b, {})
            node.setdefault(None, []).append(i)
        self.node_byte: list[int] = []
        self.node_depth: list[int] = []
        self.node_tokens: list[tuple[int, ...]] = []
        self.node_skip: list[int] = []

        def visit(node: dict, depth: int) -> None:
            for b in sorted(k for k in node if k is not None):
                child = node[b]
                index = len(self.node_byte)
                self.node_byte.append(b)
                self.node_depth.append(depth)
                self.node_tokens.append(tuple(sorted(child.get(None, ()))))
                self.node_skip.append(-1)
                visit(child, depth + 1)
                self.node_skip[index] = len(self.node_byte)

        import sys
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, 10_000))
        try:
            visit(trie, 1)
        finally:
            sys.setrecursionlimit(limit)
        self.max_depth = max(self.node_depth, default=0)

    def __len__(self) -> int:
        return len(self.token_bytes)

    def __repr__(self) -> str:
        return (f"TokenVocabulary({len(self.token_bytes)} text tokens, {len(self.node_byte)} trie nodes, "
                f"size={self.size})")


# Keyed by the tokenizer object itself (weakly: the entry goes with the tokenizer), never by
# id(), which a new tokenizer may reuse once the old one is garbage-collected.
_VOCABULARIES: "weakref.WeakKeyDictionary[Tokenizer, dict[int, TokenVocabulary]]" = weakref.WeakKeyDictionary()


def vocabulary(tokenizer: Tokenizer, size: int | None = None) -> TokenVocabulary:
    """The (cached) :class:`TokenVocabulary` of ``tokenizer`` for a model of ``size`` embeddings."""
    if not isinstance(tokenizer, Tokenizer):
        raise ValueError(f"tokenizer must be a llmbook Tokenizer, got {type(tokenizer).__name__}")
    per_size = _VOCABULARIES.setdefault(tokenizer, {})
    key = tokenizer.vocab_size if size is None else int(size)
    vocab = per_size.get(key)
    if vocab is None:
        vocab = per_size[key] = TokenVocabulary(tokenizer, size)
    return vocab


def _walk(grammar: Grammar, vocab: TokenVocabulary, sid: int, *, classify: bool):
    """Walk the byte trie from state ``sid``.

    ``classify=False``: the ids whose bytes the state can consume (allowed here).
    ``classify=True`` (``sid`` is a node alone, for the cache): ``(accepted, uncertain)`` where
    accepted ids are allowed whatever lies below the node on the stack, and uncertain ids finish
    the node's rule part-way with bytes left over, so the stack below decides.
    """
    node_byte, node_depth, node_tokens, node_skip = vocab.node_byte, vocab.node_depth, vocab.node_tokens, vocab.node_skip
    step, states = grammar.step, grammar.states
    at = [sid] + [0] * vocab.max_depth  # state after d bytes of the current path
    popped_before = [False] * (vocab.max_depth + 2)  # bottom rule finished with bytes to spare
    accepted: list[int] = []
    uncertain: list[int] = []
    i, n = 0, len(node_byte)
    while i < n:
        d = node_depth[i]
        s = step(at[d - 1], node_byte[i])
        if s == _DEAD:
            if classify and popped_before[d - 1] or classify and states[at[d - 1]][1]:
                for j in range(i, node_skip[i]):
                    uncertain.extend(node_tokens[j])
            i = node_skip[i]
            continue
        at[d] = s
        if classify:
            popped_before[d] = popped_before[d - 1] or states[at[d - 1]][1]
        accepted.extend(node_tokens[i])
        i += 1
    return (accepted, uncertain) if classify else accepted


@dataclass
class CacheStats:
    """How the vocabulary splits at the nodes the cache has seen (XGrammar's token classes).

    Per node: ``accepted`` (context-independent, allowed), ``rejected`` (context-independent,
    masked), ``uncertain`` (context-dependent: checked against the stack at run time).
    """

    nodes: int = 0
    accepted: int = 0
    rejected: int = 0
    uncertain: int = 0
    per_node: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    @property
    def context_dependent_share(self) -> float:
        total = self.accepted + self.rejected + self.uncertain
        return self.uncertain / total if total else 0.0


class MaskCache:
    """Per automaton node: the mask of tokens accepted there in any context, and the uncertain ids.

    Shared by every matcher of one (grammar, vocabulary) pair; filled lazily as nodes are
    reached, and the resulting mask of each automaton state is kept too (generation revisits the
    same states: every character inside one string is one state). Filled lazily as nodes are
    reached (:meth:`precompute` fills it for every node at once, as XGrammar does at compile).
    """

    def __init__(self, grammar: Grammar, vocab: TokenVocabulary) -> None:
        self.grammar, self.vocab = grammar, vocab
        self._entries: dict[int, tuple[torch.Tensor, tuple[int, ...]]] = {}
        self._state_masks: dict[int, torch.Tensor] = {}  # whole masks of states already seen

    def entry(self, node: int) -> tuple[torch.Tensor, tuple[int, ...]]:
        hit = self._entries.get(node)
        if hit is None:
            accepted, uncertain = _walk(self.grammar, self.vocab, self.grammar.start_state(node), classify=True)
            mask = torch.zeros(self.vocab.size, dtype=torch.bool)
            if accepted:
                mask[torch.tensor(accepted, dtype=torch.long)] = True
            hit = self._entries[node] = (mask, tuple(sorted(set(uncertain))))
        return hit

    def state_mask(self, sid: int) -> torch.Tensor:
        """The text tokens allowed at automaton state ``sid`` (EOS not included), memoized per state.

        The union over the state's stacks of each top node's context-independent mask, plus the
        node's context-dependent tokens that survive the real stack below it.
        """
        hit = self._state_masks.get(sid)
        if hit is not None:
            return hit
        stacks, _ = self.grammar.states[sid]
        mask = torch.zeros(self.vocab.size, dtype=torch.bool)
        extra: list[int] = []
        step_bytes, token_bytes = self.grammar.step_bytes, self.vocab.token_bytes
        for s in stacks:
            node_mask, uncertain = self.entry(s[-1])
            mask |= node_mask
            if uncertain:
                start = self.grammar.state_for_stack(s)
                extra += [t for t in uncertain if step_bytes(start, token_bytes[t]) != _DEAD]
        if extra:
            mask[torch.tensor(extra, dtype=torch.long)] = True
        self._state_masks[sid] = mask
        return mask

    def precompute(self) -> int:
        """Classify the vocabulary at every node that can be on top of a stack; returns their number."""
        nodes = [n for n in range(self.grammar.num_nodes) if self.grammar.byte_edges[n]]
        for n in nodes:
            self.entry(n)
        return len(nodes)

    def stats(self) -> CacheStats:
        out = CacheStats()
        text = len(self.vocab)
        for node, (mask, uncertain) in self._entries.items():
            acc = int(mask.sum())
            rej = text - acc - len(uncertain)
            out.nodes += 1
            out.accepted += acc
            out.uncertain += len(uncertain)
            out.rejected += rej
            out.per_node[f"{self.grammar.rule_names[self.grammar.node_rule[node]]}#{node}"] = (acc, rej, len(uncertain))
        return out


# ---------------------------------------------------------------------------------- the matcher
class GrammarMatcher:
    """Follows one generation: which tokens may come next, and the state after each token.

    ``allowed_tokens()`` -> (vocab.size,) bool tensor; ``accept_token(id)`` advances (raises
    ``ValueError`` for a token the grammar does not allow); ``is_accepting()``: the text so far is
    a complete sentence (then, and only then, an EOS id is allowed). ``cache=False`` computes each
    mask by walking the whole trie (the reference); ``cache=True`` uses the shared :class:`MaskCache`.
    """

    def __init__(self, grammar: Grammar, vocab: TokenVocabulary, *, cache: bool | MaskCache = True,
                 eos_token_ids: Sequence[int] | None = None) -> None:
        self.grammar, self.vocab = grammar, vocab
        if cache is True:
            cache = MaskCache(grammar, vocab)
        self.cache: MaskCache | None = cache or None
        eos = [vocab.eos_token_id] if eos_token_ids is None and vocab.eos_token_id is not None else eos_token_ids or []
        for e in eos:
            if isinstance(e, bool) or not isinstance(e, int) or not 0 <= e < vocab.size:
                raise ValueError(f"eos_token_ids must be ids in [0, {vocab.size - 1}], got {e!r}")
        self.eos_token_ids = tuple(eos)
        self.state = grammar.start_state()
        self.text = b""
        self.finished = False

    def is_accepting(self) -> bool:
        return self.grammar.is_accepting(self.state)

    def stacks(self) -> list[list[str]]:
        """The automaton's stacks now, each as rule names from the bottom (root) to the top."""
        stacks, _ = self.grammar.states[self.state]
        return sorted(self.grammar.describe_stack(s) for s in stacks)

    def allowed_tokens(self) -> torch.Tensor:
        mask = torch.zeros(self.vocab.size, dtype=torch.bool)
        if self.finished:
            return mask
        if self.cache is None:
            ids = _walk(self.grammar, self.vocab, self.state, classify=False)
            if ids:
                mask[torch.tensor(ids, dtype=torch.long)] = True
        else:
            mask |= self.cache.state_mask(self.state)
        if self.is_accepting():
            for e in self.eos_token_ids:
                mask[e] = True
        return mask

    def accept_bytes(self, data: bytes) -> None:
        """Advance over raw bytes (text the prompt already holds, such as an opening ``{"name": "``)."""
        nxt = self.grammar.step_bytes(self.state, data)
        if nxt == _DEAD:
            raise ValueError(f"the grammar does not allow {data!r} after {self.text[-40:]!r}")
        self.state = nxt
        self.text += data

    def accept_token(self, token: int) -> None:
        if self.finished:
            raise ValueError("the matcher has finished (an EOS was accepted)")
        if token in self.eos_token_ids:
            if not self.is_accepting():
                raise ValueError(f"EOS ({token}) is not allowed: the text is not yet complete")
            self.finished = True
            return
        data = self.vocab.token_bytes.get(token)
        if data is None:
            raise ValueError(f"token {token} has no text (special or out of the tokenizer's range)")
        nxt = self.grammar.step_bytes(self.state, data)
        if nxt == _DEAD:
            raise ValueError(f"token {token} ({data!r}) is not allowed after {self.text[-40:]!r}")
        self.state = nxt
        self.text += data


# ---------------------------------------------------------------------------------- generation
@dataclass
class GrammarConstraint:
    """What :func:`llmbook.generate.generate_ids` needs to constrain a batch: one matcher per row."""

    grammar: Grammar
    vocab: TokenVocabulary
    cache: MaskCache | None
    prefix: bytes = b""
    matchers: list[GrammarMatcher] = field(default_factory=list)

    def start(self, batch: int, eos_token_ids: Sequence[int]) -> None:
        if not eos_token_ids:
            raise ValueError("constrained generation needs an EOS id to end a complete row "
                             "(stop_at_eos=False or a tokenizer without EOS)")
        self.matchers = [GrammarMatcher(self.grammar, self.vocab, cache=self.cache or False,
                                        eos_token_ids=list(eos_token_ids)) for _ in range(batch)]
        for m in self.matchers:
            m.accept_bytes(self.prefix)

    def masks(self, running: Sequence[bool]) -> torch.Tensor:
        """(batch, vocab) bool: the allowed tokens of each running row (finished rows: all True)."""
        rows = [m.allowed_tokens() if r else torch.ones(self.vocab.size, dtype=torch.bool)
                for m, r in zip(self.matchers, running)]
        return torch.stack(rows)

    def advance(self, tokens: Sequence[int], running: Sequence[bool]) -> None:
        for m, t, r in zip(self.matchers, tokens, running):
            if r:
                m.accept_token(t)

    def complete(self) -> list[bool]:
        return [m.finished or m.is_accepting() for m in self.matchers]


GrammarLike = Union[Grammar, str]


def grammar_constraint(tokenizer: Tokenizer, vocab_size: int, *, json_schema: Mapping | None = None,
                       grammar: GrammarLike | None = None, cache: bool = True,
                       prefix: str = "", engine: str = "llmbook") -> GrammarConstraint | XGrammarConstraint:
    """Build the constraint for :func:`llmbook.generate.generate`: a schema, ``grammar="json"`` or a
    :class:`Grammar` (exactly one). ``prefix``: the start of the constrained text that the prompt
    already holds (each row's matcher begins after it; ``ValueError`` if the grammar rejects it).

    ``engine="llmbook"`` runs this module's matchers (``cache``: share a :class:`MaskCache`);
    ``engine="xgrammar"`` runs XGrammar (imported only then; see :class:`XGrammarConstraint`) on
    the same schema, compiled in the same output format. The schema must still be in llmbook's
    subset (the same ``ValueError`` otherwise; XGrammar would silently ignore some keywords), and
    enum/const values that XGrammar spells its own way (objects and arrays without the separators'
    spaces, DEL escaped, whole floats as integers: see ``_xgrammar_spelling_problem``) raise
    ``ValueError``, so the two engines constrain to the same language: the parity tests find their
    masks identical but for UTF-8-encoded surrogates (``ED A0..BF``), which XGrammar allows inside
    strings and llmbook does not. A :class:`Grammar` object runs only on llmbook; ``grammar="json"``
    on XGrammar is its empty schema (any JSON value, our separators: :func:`xgrammar_compile`).
    """
    _check_engine(engine)
    if (json_schema is None) == (grammar is None):
        raise ValueError("pass exactly one of json_schema= and grammar=")
    if json_schema is not None:
        g = json_schema_grammar(json_schema)
    elif isinstance(grammar, Grammar):
        if engine != "llmbook":
            raise ValueError(f"a llmbook Grammar object runs only with engine='llmbook' (got engine={engine!r}); "
                             "pass json_schema= or grammar='json' to use another engine")
        g = grammar
    elif grammar == "json":
        g = json_grammar()
    else:
        raise ValueError(f"grammar must be 'json' or a llmbook.constrained.Grammar, got {grammar!r}")
    if not isinstance(prefix, str):
        raise ValueError(f"prefix must be a str, got {type(prefix).__name__}")
    if not g.accepts_prefix(prefix):
        raise ValueError(f"prefix {prefix!r} cannot start a sentence of the grammar")
    if engine == "xgrammar":
        problem = _xgrammar_spelling_problem(json_schema) if json_schema is not None else None
        if problem:
            raise ValueError(f"json_schema at {problem}: engine='xgrammar' would not write the text llmbook "
                             "writes here, so it is refused; use engine='llmbook'")
        compiled = xgrammar_compile(tokenizer, vocab_size, json_schema=json_schema, any_json=json_schema is None)
        return XGrammarConstraint(compiled, vocab_size, prefix.encode("utf-8"))
    vocab = vocabulary(tokenizer, vocab_size)
    return GrammarConstraint(g, vocab, MaskCache(g, vocab) if cache else None, prefix.encode("utf-8"))


# ---------------------------------------------------------------------------------- a production engine
ENGINES = ("llmbook", "xgrammar")


def _check_engine(engine: Any) -> str:
    if not isinstance(engine, str) or engine not in ENGINES:
        raise ValueError(f"engine must be one of {list(ENGINES)}, got {engine!r}")
    return engine


def _import_xgrammar():
    """XGrammar, imported only when asked for: it is a dev dependency (the parity reference), not one of
    llmbook's."""
    try:
        import xgrammar
    except ImportError as err:
        raise ImportError("engine='xgrammar' needs the xgrammar package, which llmbook does not install "
                          "(it is in llmbook's dev extra): pip install 'xgrammar>=0.2.9'") from err
    return xgrammar


_XGRAMMAR_COMPILERS: dict[tuple[int, int], tuple[Tokenizer, Any]] = {}


def _xgrammar_compiler(tokenizer: Tokenizer, vocab_size: int):
    """An ``xgrammar.GrammarCompiler`` for ``tokenizer`` and a model of ``vocab_size`` embeddings (cached).

    The tokens are given as their exact bytes (``VocabType.RAW``). Special tokens (and holes) get
    ``b""``, XGrammar's mark for "never text": it treats any other string, ``<|im_start|>`` included,
    as text that may appear inside a JSON string; ids past the tokenizer's are special too. The stop
    tokens are set per matcher (``override_stop_tokens``: the generation's EOS ids).
    """
    key = (id(tokenizer), vocab_size)
    hit = _XGRAMMAR_COMPILERS.get(key)
    if hit is not None and hit[0] is tokenizer:
        return hit[1]
    xgr = _import_xgrammar()
    if vocab_size < tokenizer.vocab_size:
        raise ValueError(f"vocab_size ({vocab_size}) must be >= the tokenizer's vocabulary ({tokenizer.vocab_size})")
    blank = set(tokenizer.special_ids) | set(tokenizer.unassigned_ids)
    try:
        encoded = [b"" if i in blank else tokenizer.token_bytes(i) for i in range(tokenizer.vocab_size)]
    except ValueError as err:
        raise ValueError("constrained decoding needs a tokenizer whose tokens are byte strings "
                         f"(byte-level BPE, or SentencePiece with byte fallback): {err}") from None
    stop = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else None
    info = xgr.TokenizerInfo(encoded, xgr.VocabType.RAW, vocab_size=vocab_size, stop_token_ids=stop)
    compiler = xgr.GrammarCompiler(info, cache_enabled=True)
    _XGRAMMAR_COMPILERS[key] = (tokenizer, compiler)
    return compiler


def xgrammar_compile(tokenizer: Tokenizer, vocab_size: int, *, json_schema: Mapping | None = None,
                     any_json: bool = False):
    """XGrammar's compiled grammar for a schema, or for any JSON value (``any_json``), in llmbook's
    output format: one line, separators ``", "`` and ``": "`` (``any_whitespace=False``), and
    ``strict_mode=True`` (no properties or items beyond those listed, as llmbook).

    Any JSON uses the empty schema ``{}`` with those separators, not XGrammar's builtin JSON grammar:
    that one allows free whitespace (``[ \\n\\t\\r]*``) between all tokens and only an object or an
    array at the top, unlike :func:`json_grammar`; ``{}`` admits any value with exactly our
    separators, which is :func:`json_grammar`'s language (the parity tests compare the masks).
    """
    compiler = _xgrammar_compiler(tokenizer, vocab_size)
    schema = "{}" if any_json else json.dumps(json_schema, default=dict)
    return compiler.compile_json_schema(schema, any_whitespace=False, separators=(", ", ": "), strict_mode=True)


def _xgrammar_spelling_problem(schema: Any, where: str = "#") -> str | None:
    """Why XGrammar would write a value of ``schema`` differently from llmbook, or None.

    XGrammar spells enum/const values with its own serializer, not as :func:`json.dumps` does:
    objects and arrays compact (``{"a":[1,2]}``, ignoring the separators), DEL as ``\\u007f`` (in
    property names too), whole floats as integers (``1.0`` -> ``1``, ``-0.0`` -> ``-0``), integers
    past 64 bits as doubles. llmbook keeps one spelling, json.dumps's with the configured separators.
    """
    if isinstance(schema, list):
        for i, s in enumerate(schema):
            problem = _xgrammar_spelling_problem(s, f"{where}/{i}")
            if problem:
                return problem
        return None
    if not isinstance(schema, Mapping):
        return None

    def value_problem(v: Any) -> str | None:
        if isinstance(v, str):
            return "a string with DEL (XGrammar writes \\u007f)" if "\x7f" in v else None
        if isinstance(v, float):
            return f"the whole float {v!r} (XGrammar writes it as an integer)" if v.is_integer() else None
        if isinstance(v, int) and not isinstance(v, bool) and not -2**63 <= v < 2**63:
            return f"the integer {v} beyond 64 bits (XGrammar writes a double)"
        if isinstance(v, (list, dict)):
            if json.dumps(v, separators=(", ", ": ")) != json.dumps(v, separators=(",", ":")):
                return f"the {type(v).__name__} {v!r} (XGrammar writes it without the separators' spaces)"
            items = list(v.items()) if isinstance(v, dict) else [(None, x) for x in v]
            for key, x in items:
                problem = value_problem(key) or value_problem(x)
                if problem:
                    return problem
        return None

    for key in ("enum", "const"):
        if key in schema:
            values = schema[key] if key == "enum" and isinstance(schema[key], list) else [schema[key]]
            for v in values:
                problem = value_problem(v)
                if problem:
                    return f"{where}/{key}: {problem}"
    for name, sub in schema.get("properties", {}).items():  # a Mapping: json_schema_grammar checked it
        if "\x7f" in name:
            return f"{where}/properties: the property name {name!r} has DEL (XGrammar writes \\u007f)"
        problem = _xgrammar_spelling_problem(sub, f"{where}/properties/{name}")
        if problem:
            return problem
    for key in ("items", "anyOf"):
        if key in schema:
            problem = _xgrammar_spelling_problem(schema[key], f"{where}/{key}")
            if problem:
                return problem
    return None


def _unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """XGrammar's int32 bitmask (B, ceil(V/32)), bit j of word w = token 32 w + j -> bool (B, V)."""
    bits = (bitmask.unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1
    return bits.view(bitmask.shape[0], -1)[:, :vocab_size].bool()


@dataclass
class XGrammarConstraint:
    """The :class:`GrammarConstraint` interface run by XGrammar: one ``xgrammar.GrammarMatcher`` per row.

    ``masks`` fills XGrammar's token bitmask row by row (``fill_next_token_bitmask``) and unpacks it
    to the (batch, vocab) bool mask :func:`llmbook.generate.generate_ids` applies; ``advance``
    accepts each running row's token; ``complete`` is XGrammar's ``is_terminated()`` (the row ended
    on a stop token) or ``is_completed()`` (its text is a whole sentence, the row cut there).
    """

    compiled: Any  # xgrammar.CompiledGrammar
    vocab_size: int
    prefix: bytes = b""
    matchers: list = field(default_factory=list)
    _bitmask: torch.Tensor | None = None

    def start(self, batch: int, eos_token_ids: Sequence[int]) -> None:
        if not eos_token_ids:
            raise ValueError("constrained generation needs an EOS id to end a complete row "
                             "(stop_at_eos=False or a tokenizer without EOS)")
        xgr = _import_xgrammar()
        stop = [int(e) for e in eos_token_ids]
        self.matchers = [xgr.GrammarMatcher(self.compiled, override_stop_tokens=stop) for _ in range(batch)]
        for m in self.matchers:
            if self.prefix and not m.accept_string(self.prefix):
                raise ValueError(f"xgrammar does not allow the prefix {self.prefix!r}")
        self._bitmask = xgr.allocate_token_bitmask(batch, self.vocab_size)

    def masks(self, running: Sequence[bool]) -> torch.Tensor:
        """(batch, vocab) bool: the allowed tokens of each running row (finished rows: all True)."""
        bitmask = self._bitmask
        for i, (m, r) in enumerate(zip(self.matchers, running)):
            if r:
                m.fill_next_token_bitmask(bitmask, i)
            else:
                bitmask[i] = -1
        return _unpack_bitmask(bitmask, self.vocab_size)

    def advance(self, tokens: Sequence[int], running: Sequence[bool]) -> None:
        for i, (m, t, r) in enumerate(zip(self.matchers, tokens, running)):
            if r and not m.accept_token(int(t)):
                raise ValueError(f"row {i}: xgrammar does not allow token {t} here")

    def complete(self) -> list[bool]:
        return [m.is_terminated() or m.is_completed() for m in self.matchers]
