"""llmbook.constrained: the byte-level grammar, the JSON-Schema compiler, token masks, generation."""

from __future__ import annotations

import json
import random

import jsonschema
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmbook.constrained import (
    Grammar, GrammarMatcher, MaskCache, alt, chars, grammar_constraint, integer_range, json_grammar,
    json_schema_grammar, lit, ref, seq, star, vocabulary,
)
from llmbook.generate import generate
from llmbook.hub import load

S = {"type": "string"}
CARD = {
    "type": "object",
    "properties": {
        "name": S, "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "town": {"type": "object", "properties": {"name": {"enum": ["Ashford", "Ashby", "Brook"]}, "region": S},
                 "required": ["name", "region"], "additionalProperties": False},
        "job": S,
        "pet": {"type": "object", "properties": {"species": S, "name": S}, "required": ["species", "name"]},
        "favourite_food": S, "friends": {"type": "array", "items": S, "maxItems": 3},
    },
    "required": ["name", "age", "town", "job", "pet", "favourite_food", "friends"],
    "additionalProperties": False,
}
CARD_TEXT = ('{"name": "Ada", "age": 31, "town": {"name": "Ashby", "region": "North"}, "job": "baker", '
             '"pet": {"species": "cat", "name": "Tom"}, "favourite_food": "soup", "friends": ["Bo", "Cy"]}')
VARIED = [
    CARD,
    {"type": "array", "items": {"type": "object", "properties": {"id": {"type": "integer"}, "tags": {
        "type": "array", "items": {"enum": ["a", "ab", "abc"]}, "minItems": 1, "maxItems": 2}},
        "required": ["id"]}, "maxItems": 3},
    {"type": "object", "properties": {"x": {"type": "number"}, "s": S, "b": {"type": "boolean"},
                                      "n": {"type": "null"}, "c": {"const": "k\"\\é"}},
     "required": ["x", "s", "b", "n", "c"]},
    {"type": "object", "properties": {"opt1": S, "opt2": {"type": "integer", "exclusiveMinimum": -7,
                                                          "maximum": 42}, "req": {"type": ["string", "null"]}},
     "required": ["req"]},
]


@pytest.fixture(scope="module")
def tiny():
    return load("tinyworld-main")


# ------------------------------------------------------------------ the grammar, against json.loads
def test_card_schema_accepts_exactly_the_valid_texts():
    g = json_schema_grammar(CARD)
    assert g.accepts(CARD_TEXT)
    assert not g.accepts(CARD_TEXT[:-1]) and g.accepts_prefix(CARD_TEXT[:-1])
    for bad in [CARD_TEXT.replace("31", "121"), CARD_TEXT.replace("31", "031"), CARD_TEXT.replace("Ashby", "Ash"),
                CARD_TEXT.replace(', "Cy"', ', "Cy", "D", "E"'), CARD_TEXT.replace('": ', '":'),
                CARD_TEXT.replace('"job"', '"work"'), CARD_TEXT + " ", " " + CARD_TEXT]:
        assert not g.accepts(bad), bad


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(json_values, st.booleans())
def test_json_grammar_accepts_what_json_dumps_writes(value, ascii_only):
    text = json.dumps(value, ensure_ascii=ascii_only)
    assert json_grammar().accepts(text)
    assert json_grammar(separators=None).accepts(json.dumps(value, indent=2))


def _python_parses(data: bytes) -> bool:
    try:
        json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return False
    return True


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values, st.lists(st.tuples(st.integers(0, 400), st.sampled_from(
    list(b'{}[]",:0123456789.eE+- \n\\tnulfarsu') + [0x7F, 0x01, 0xC3, 0xA9, 0xE2, 0x80, 0xFF])), max_size=3))
def test_flexible_json_grammar_agrees_with_the_json_module(value, edits):
    """Mutate valid JSON a few bytes at a time: the grammar accepts exactly what json.loads parses."""
    data = bytearray(json.dumps(value, indent=1, ensure_ascii=False).encode("utf-8"))
    for pos, byte in edits:
        pos %= len(data) + 1
        if byte % 3 == 0 and pos < len(data):
            del data[pos]
        else:
            data.insert(pos, byte)
    data = bytes(data)
    if any(word in data for word in (b"NaN", b"Infinity")):
        return  # Python's json extension, not JSON
    assert json_grammar(separators=None).accepts(data) == _python_parses(data), data


@pytest.mark.parametrize("low,high", [(0, 120), (-7, 42), (5, 5), (-120, -3), (None, 15), (-15, None), (98, 1003),
                                      (None, -11), (0, None)])
def test_integer_ranges_are_exact(low, high):
    g = Grammar({"int": integer_range(low, high)}, "int")
    lo = -1500 if low is None else low - 40
    hi = 1500 if high is None else high + 40
    for n in range(lo, hi + 1):
        inside = (low is None or n >= low) and (high is None or n <= high)
        assert g.accepts(str(n)) == inside, n
    for text in ["-0", "01", "+1", "1.0", ""]:
        assert not g.accepts(text)


@pytest.mark.parametrize("schema", VARIED, ids=["card", "nested_arrays", "scalars", "optional"])
def test_random_sentences_of_a_schema_validate(schema, tiny):
    """Walk the grammar token by token at random (TinyWorld's vocabulary): every complete text is
    JSON that jsonschema validates, keys in the schema's order."""
    _, tok = tiny
    g = json_schema_grammar(schema)
    vocab = vocabulary(tok)
    cache = MaskCache(g, vocab)
    rng = random.Random(0)
    done = 0
    for _ in range(30):
        m = GrammarMatcher(g, vocab, cache=cache)
        for _ in range(400):
            allowed = m.allowed_tokens().nonzero()[:, 0].tolist()
            if m.is_accepting() and (rng.random() < 0.3 or allowed == [tok.eos_token_id]):
                break
            choices = [t for t in allowed if t != tok.eos_token_id]
            # Uniform choice would stay inside strings: favour tokens that close something.
            weights = [50 if any(c in vocab.token_bytes[t] for c in b'",]}') else 1 for t in choices]
            m.accept_token(rng.choices(choices, weights)[0])
        if m.is_accepting():
            done += 1
            value = json.loads(m.text.decode("utf-8"))
            jsonschema.validate(value, schema)
            if isinstance(value, dict) and "properties" in schema:
                order = [k for k in schema["properties"] if k in value]
                assert list(value) == order
    assert done >= 10


# ------------------------------------------------------------------ token masks
def _prefix_masks(tok, grammar, text, cache):
    vocab = vocabulary(tok)
    m = GrammarMatcher(grammar, vocab, cache=cache)
    masks = []
    for t in tok.encode(text):
        masks.append(m.allowed_tokens())
        m.accept_token(t)
    masks.append(m.allowed_tokens())
    return masks, m


def test_masks_are_exactly_the_tokens_that_keep_a_prefix(tiny):
    """Brute force: a token is allowed iff the text with it is still a prefix of a sentence."""
    _, tok = tiny
    g = json_schema_grammar(CARD)
    vocab = vocabulary(tok)
    ids = tok.encode(CARD_TEXT)
    m = GrammarMatcher(g, vocab)
    for step, t in enumerate(ids):
        if step % 3 == 0:
            mask = m.allowed_tokens()
            for i, data in vocab.token_bytes.items():
                assert bool(mask[i]) == g.accepts_prefix(m.text + data), (m.text, data)
            assert not mask[list(vocab.special_ids)].any()
        m.accept_token(t)
    assert m.is_accepting() and m.allowed_tokens().nonzero()[:, 0].tolist() == [tok.eos_token_id]


@pytest.mark.parametrize("schema,text", [(CARD, CARD_TEXT),
                                         (VARIED[1], '[{"id": -3, "tags": ["ab", "abc"]}, {"id": 0}]'),
                                         (VARIED[2], '{"x": -1.5e+3, "s": "a\\"b\\u00e9\\n", "b": true, "n": null, '
                                                     '"c": "k\\"\\\\é"}')])
def test_cached_masks_equal_the_full_trie_walk(tiny, schema, text):
    _, tok = tiny
    g = json_schema_grammar(schema)
    assert g.accepts(text)
    cached, _ = _prefix_masks(tok, g, text, True)
    walked, _ = _prefix_masks(tok, g, text, False)
    assert all(torch.equal(a, b) for a, b in zip(cached, walked))


def test_cache_splits_the_vocabulary_into_three_classes(tiny):
    _, tok = tiny
    g = json_schema_grammar(CARD)
    cache = MaskCache(g, vocabulary(tok))
    nodes = cache.precompute()
    stats = cache.stats()
    assert stats.nodes == nodes > 0
    assert stats.accepted + stats.rejected + stats.uncertain == nodes * len(vocabulary(tok))
    # Inside a string, '",' finishes the string with a byte left over: context-dependent.
    inside = g.start_state()
    for b in b'{"name": "A':
        inside = g.step(inside, b)
    uncertain = {t for stack in g.states[inside][0] for t in cache.entry(stack[-1])[1]}
    assert tok.token_to_id('",') in uncertain
    assert 0 < stats.context_dependent_share < 0.01


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("schema,needle", [
    ({"type": "string", "pattern": "a+"}, "'pattern'"),
    ({"type": "object", "properties": {"a": {"type": "string", "maxLength": 3}}}, "maxLength"),
    ({"type": "array", "items": S, "minItems": 3, "maxItems": 2}, "minItems (3) > maxItems (2)"),
    ({"type": "object", "properties": {"a": S}, "required": ["b"]}, "'b'"),
    ({"type": "object", "properties": {}, "additionalProperties": True}, "additionalProperties"),
    ({"enum": []}, "non-empty"),
    ({"type": "integer", "minimum": 5, "maximum": 4}, "minimum > maximum"),
    ({"type": "number", "minimum": 1}, "'minimum'"),
    ({"type": "strin"}, "type must be one of"),
    ({}, "any JSON value"),
    ({"$ref": "#/$defs/x"}, "'$ref'"),
])
def test_bad_schemas_raise_naming_the_problem(schema, needle):
    with pytest.raises(ValueError, match="json_schema") as err:
        json_schema_grammar(schema)
    assert needle in str(err.value)


def test_bad_grammars_raise():
    with pytest.raises(ValueError, match="left-recursive"):
        Grammar({"e": alt(seq(ref("e"), lit("+")), lit("1"))}, "e")
    with pytest.raises(ValueError, match="matches no string"):
        Grammar({"e": seq(lit("("), ref("e"), lit(")"))}, "e")
    with pytest.raises(ValueError, match="not a rule"):
        Grammar({"e": ref("f")}, "e")
    with pytest.raises(ValueError, match="separators"):
        json_grammar(separators=(";", ":"))
    with pytest.raises(ValueError, match="'unused' refers to 'f'"):  # checked even where unreachable
        Grammar({"e": lit("x"), "unused": ref("f")}, "e")
    assert Grammar({"e": lit("x"), "unused": lit("y")}, "e").rule_names == ["e"]  # not compiled
    g = Grammar({"e": seq(lit("("), star(ref("e")), lit(")"))}, "e")  # balanced parentheses
    assert g.accepts("(()(()))") and not g.accepts("(()") and not g.accepts("())")


def test_matcher_refuses_tokens_and_eos_the_grammar_does_not_allow(tiny):
    _, tok = tiny
    m = GrammarMatcher(json_schema_grammar(CARD), vocabulary(tok))
    with pytest.raises(ValueError, match="not allowed"):
        m.accept_token(tok.encode("[")[0])
    with pytest.raises(ValueError, match="EOS"):
        m.accept_token(tok.eos_token_id)


def test_a_tokenizer_without_byte_tokens_is_refused(tiny):
    _, tok = tiny

    class NotBytes(type(tok)):
        def token_bytes(self, i):
            raise ValueError("token_bytes needs a ByteLevel or SentencePiece-style decoder")

    other = NotBytes(tok.backend, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    with pytest.raises(ValueError, match="byte strings"):
        vocabulary(other)


# ------------------------------------------------------------------ generation
def test_constrained_generation_is_complete_and_valid(tiny):
    model, tok = tiny
    prefix = '{"name": "'
    r = generate(model, tok, [prefix] * 12, max_new_tokens=120, temperature=1.5, seed=3, add_bos=True,
                 json_schema=CARD | {"properties": CARD["properties"] | {"town": {
                     "type": "object", "properties": {"name": S, "region": S}, "required": ["name", "region"]}}},
                 grammar_prefix=prefix)
    assert r.complete is not None
    for text, complete, reason in zip(r.texts, r.complete, r.finish_reasons):
        if complete:
            value = json.loads(prefix + text)
            assert list(value)[:2] == ["name", "age"] and 0 <= value["age"] <= 120
        else:
            assert reason == "length"
    assert sum(r.complete) >= 6


def test_a_row_cut_by_max_new_tokens_is_incomplete(tiny):
    model, tok = tiny
    r = generate(model, tok, ["{"], max_new_tokens=4, temperature=0, json_schema=CARD, grammar_prefix="{",
                 add_bos=True)
    assert r.complete == [False] and r.finish_reasons == ["length"]
    unconstrained = generate(model, tok, ["{"], max_new_tokens=4, temperature=0, add_bos=True)
    assert unconstrained.complete is None


def test_constrained_rows_are_independent_of_the_batch(tiny):
    model, tok = tiny
    kw = dict(max_new_tokens=40, temperature=1.0, json_schema=CARD, add_bos=True)
    batch = generate(model, tok, ["", "{"], seed=[5, 6], **kw)
    alone = generate(model, tok, [""], seed=[5], **kw)
    assert batch.tokens[0] == alone.tokens[0]


def test_greedy_constrained_generation_is_argmax_over_allowed_tokens(tiny):
    """The generation loop's constrained greedy path equals a hand-written loop."""
    model, tok = tiny
    g = json_grammar()
    r = generate(model, tok, [""], max_new_tokens=25, temperature=0, grammar="json", add_bos=True)
    m = GrammarMatcher(g, vocabulary(tok, model.config.vocab_size))
    ids = [tok.bos_token_id]
    out = []
    with torch.no_grad():
        for _ in range(25):
            logits = model(torch.tensor([ids], device=model.device))[0, -1].float().cpu()
            logits[~m.allowed_tokens()] = float("-inf")
            t = int(logits.argmax())
            out.append(t)
            if t == tok.eos_token_id:
                break
            m.accept_token(t)
            ids.append(t)
    assert r.tokens[0] == out


def test_generate_rejects_bad_constraint_arguments(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="exactly one"):
        generate(model, tok, "x", json_schema=CARD, grammar="json")
    with pytest.raises(ValueError, match="grammar must be"):
        generate(model, tok, "x", grammar="yaml")
    with pytest.raises(ValueError, match="cannot start"):
        generate(model, tok, "x", grammar="json", grammar_prefix="}")
    with pytest.raises(ValueError, match="needs json_schema"):
        generate(model, tok, "x", grammar_prefix="{")
    with pytest.raises(ValueError, match="EOS"):
        generate(model, tok, "x", grammar="json", stop_at_eos=False)


# ------------------------------------------------------------------ engine="xgrammar" behind the same interface
def _same_generation(model, tok, **kw):
    ours = generate(model, tok, grammar_engine="llmbook", **kw)
    theirs = generate(model, tok, grammar_engine="xgrammar", **kw)
    assert theirs.tokens == ours.tokens
    assert theirs.complete == ours.complete
    assert theirs.finish_reasons == ours.finish_reasons and theirs.texts == ours.texts
    return ours


@pytest.mark.parametrize("temperature", [0, 1.3])
def test_xgrammar_engine_generates_the_same_tokens(tiny, temperature):
    """Same masks => same tokens: greedy and seeded sampling, card schema, one row cut by the length."""
    pytest.importorskip("xgrammar")
    model, tok = tiny
    prompts = ["", "{", "The card:", "Name", "x", "{\"", "Ada", ""]
    r = _same_generation(model, tok, prompts=prompts, max_new_tokens=90, temperature=temperature,
                         seed=[11, 12, 13, 14, 15, 16, 17, 18], json_schema=CARD, add_bos=True)
    assert True in r.complete  # both outcomes occur, so the flags are really compared
    short = _same_generation(model, tok, prompts=prompts[:2], max_new_tokens=6, temperature=temperature, seed=3,
                             json_schema=CARD, add_bos=True)
    assert short.complete == [False, False]
    if temperature:
        assert len({tuple(t) for t in r.tokens}) > 1
    for text, complete in zip(r.texts, r.complete):
        if complete:
            jsonschema.validate(json.loads(text), CARD)


def test_xgrammar_engine_with_a_prefix_and_any_json(tiny):
    pytest.importorskip("xgrammar")
    model, tok = tiny
    prefix = '{"name": "'
    _same_generation(model, tok, prompts=[prefix] * 4, max_new_tokens=80, temperature=1.0, seed=7,
                     json_schema=CARD, grammar_prefix=prefix, add_bos=True)
    r = _same_generation(model, tok, prompts=["", "[", "{"], max_new_tokens=40, temperature=1.2, seed=9,
                         grammar="json", add_bos=True)
    assert any(r.complete)


def test_engine_arguments_are_checked(tiny):
    model, tok = tiny
    for bad in ["XGrammar", "llguidance", "", None, 1]:
        with pytest.raises(ValueError, match="grammar_engine must be one of"):
            generate(model, tok, "x", json_schema=CARD, grammar_engine=bad)
        with pytest.raises(ValueError, match="engine must be one of"):
            grammar_constraint(tok, model.config.vocab_size, json_schema=CARD, engine=bad)
    with pytest.raises(ValueError, match="engine='llmbook'"):
        generate(model, tok, "x", grammar=json_grammar(), grammar_engine="xgrammar")
    with pytest.raises(ValueError, match="needs json_schema"):
        generate(model, tok, "x", grammar_engine="xgrammar")
    with pytest.raises(ValueError, match="'pattern'"):  # llmbook's subset on both engines
        generate(model, tok, "x", json_schema={"type": "string", "pattern": "a+"}, grammar_engine="xgrammar")
    with pytest.raises(ValueError, match="cannot start"):
        generate(model, tok, "x", json_schema=CARD, grammar_prefix="[", grammar_engine="xgrammar")


def test_xgrammar_engine_without_xgrammar_names_the_package(tiny, monkeypatch):
    import sys

    import llmbook.constrained as constrained
    model, tok = tiny
    monkeypatch.setitem(sys.modules, "xgrammar", None)  # `import xgrammar` now raises ImportError
    monkeypatch.setattr(constrained, "_XGRAMMAR_COMPILERS", {})
    with pytest.raises(ImportError, match="needs the xgrammar package"):
        generate(model, tok, "x", json_schema=CARD, grammar_engine="xgrammar")
