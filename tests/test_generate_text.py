"""llmbook.generate: the text of generated ids, decoded in the context of the prompt.

For byte-level BPE and SentencePiece-style tokenizers (Metaspace, byte fallback) alike:
``decode(prompt_ids) + result.text == decode(prompt_ids + generated ids)``, stop strings cut the
text at their first occurrence, and the streamed pieces concatenate to ``result.text``.
A scripted model makes generate produce exactly the ids a test (or hypothesis) chooses.
"""

from __future__ import annotations

import os
from functools import lru_cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmbook.generate import generate
from llmbook.tokenizer import Tokenizer, bytes_to_unicode
from model_helpers import make_sp_tokenizer, make_tokenizer, scripted_model

KINDS = ["byte_level", "sp_llama2", "sp_metaspace"]


@lru_cache(maxsize=None)
def tokenizer(kind: str) -> Tokenizer:
    if kind == "byte_level":
        return Tokenizer(make_tokenizer(), bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return Tokenizer(make_sp_tokenizer(kind.removeprefix("sp_")), bos_token_id=1, eos_token_id=2)


def byte_id(tok: Tokenizer, b: int) -> int:
    """The id of the single-byte token for byte ``b``."""
    if tok.byte_fallback_ids:
        return tok.token_to_id(f"<0x{b:02X}>")
    return tok.token_to_id(bytes_to_unicode()[b])


def run(tok: Tokenizer, prompt: str, script: list[int], **kwargs):
    """generate() choosing exactly ``script``; returns (result, streamed pieces)."""
    pieces: list[str] = []
    model = scripted_model(tok.vocab_size, [script])
    result = generate(model, tok, prompt, max_new_tokens=len(script), temperature=0,
                      stream=lambda row, piece: pieces.append(piece), **kwargs)
    return result, pieces


def continuation(tok: Tokenizer, prompt_ids: list[int], generated: list[int]) -> str:
    """The specification: what ``generated`` adds to ``decode(prompt_ids)``."""
    before, full = tok.decode(prompt_ids), tok.decode(prompt_ids + generated)
    return full[len(os.path.commonprefix([before, full])):]


def expected_text(tok: Tokenizer, prompt_ids: list[int], script: list[int], stop: list[str]) -> tuple[str, str]:
    """(text, finish reason) by the definition: the first step whose text holds a stop string is cut there."""
    eos = {tok.eos_token_id}
    end = next((k for k, t in enumerate(script) if t in eos), None)
    generated = script if end is None else script[:end]
    for k in range(1, len(generated) + 1):
        text = continuation(tok, prompt_ids, generated[:k])
        cuts = [text.find(s) for s in stop if s in text]
        if cuts:
            return text[:min(cuts)], "stop"
    return continuation(tok, prompt_ids, generated), "length" if end is None else "eos"


# ------------------------------------------------------------------ the reported cases
@pytest.mark.parametrize("kind", ["sp_llama2", "sp_metaspace"])
def test_sentencepiece_text_keeps_the_leading_space(kind):
    tok = tokenizer(kind)
    cat, sat = tok.token_to_id("▁cat"), tok.token_to_id("▁sat")
    assert tok.decode([cat, sat]) == "cat sat"  # alone, the decoder drops the first space
    result, pieces = run(tok, "The", [cat, sat])
    assert result.text == " cat sat" and "The" + result.text == tok.decode(tok.encode("The") + [cat, sat])
    assert "".join(pieces) == result.text
    # without a stream or stop strings generate decodes once at the end: the same text
    plain = generate(scripted_model(tok.vocab_size, [[cat, sat]]), tok, "The", max_new_tokens=2, temperature=0)
    assert plain.text == " cat sat"


@pytest.mark.parametrize("kind", KINDS)
def test_stop_string_beginning_with_a_space_fires(kind):
    tok = tokenizer(kind)
    script = tok.encode(" cat sat on the mat")[:]
    if kind != "byte_level":
        script = [tok.token_to_id("▁cat"), tok.token_to_id("▁sat"), *tok.encode("on the mat")]
    assert tok.decode(tok.encode("The") + script) == "The cat sat on the mat"
    result, pieces = run(tok, "The", script, stop=[" cat"])
    assert result.text == "" and result.finish_reasons == ["stop"] and pieces == []
    result, pieces = run(tok, "The", script, stop=[" sat", " mat"])
    assert result.text == " cat" and result.finish_reasons == ["stop"] and "".join(pieces) == " cat"
    prompt_ids, generated = result.prompt_ids[0], result.tokens[0]
    # it stopped at the token that completed " sat"
    assert " sat" in continuation(tok, prompt_ids, generated) and " sat" not in continuation(tok, prompt_ids, generated[:-1])


@pytest.mark.parametrize("kind", KINDS)
def test_streaming_an_emoji_made_of_byte_tokens(kind):
    tok = tokenizer(kind)
    emoji = [byte_id(tok, b) for b in "🙂".encode()]
    script = tok.encode(" Hi") + emoji + tok.encode("!")
    if kind != "byte_level":
        script = [tok.token_to_id("▁"), tok.token_to_id("H"), tok.token_to_id("i"), *emoji, tok.token_to_id("!")]
    result, pieces = run(tok, "Say", script)
    assert result.text == " Hi🙂!"
    assert "".join(pieces) == result.text
    assert not any("\ufffd" in p for p in pieces) and any("🙂" in p for p in pieces)
    # stopped right after the emoji's last byte: the held-back emoji is flushed, not lost
    result, pieces = run(tok, "Say", script[:-1])
    assert result.text == " Hi🙂" and "".join(pieces) == " Hi🙂"
    # stopped inside the emoji: the text is what the tokenizer decodes, replacement characters included
    result, pieces = run(tok, "Say", script[:-3])
    assert result.text == continuation(tok, tok.encode("Say"), script[:-3]) and result.text.endswith("\ufffd")
    assert "".join(pieces) == result.text


@pytest.mark.parametrize("kind", ["sp_llama2", "sp_metaspace"])
def test_prompt_ending_in_byte_tokens_continued_by_byte_tokens(kind):
    # SentencePiece decodes a whole run of byte tokens at once: generated bytes join the run the
    # prompt's emoji ends with.
    tok = tokenizer(kind)
    prompt_ids = tok.encode("Hi🙂")
    assert prompt_ids[-1] in tok.byte_fallback_ids
    valid = [byte_id(tok, 0x41), tok.token_to_id("▁cat")]  # 'A': the run stays valid UTF-8
    result, pieces = run(tok, "Hi🙂", valid)
    assert result.text == "A cat" == tok.decode(prompt_ids + valid)[len("Hi🙂"):]
    assert "".join(pieces) == result.text
    invalid = [byte_id(tok, 0x9F), tok.token_to_id("!")]  # a stray continuation byte: the whole run is invalid
    full = tok.decode(prompt_ids + invalid)
    assert full == "Hi" + "\ufffd" * 5 + "!"  # the prompt's own emoji is rewritten
    result, pieces = run(tok, "Hi🙂", invalid)
    assert result.text == "\ufffd" * 5 + "!" and "Hi" + result.text == full  # the text starts where they part
    assert "".join(pieces) == result.text


@pytest.mark.parametrize("kind", KINDS)
def test_special_tokens_and_bos_in_the_text(kind):
    tok = tokenizer(kind)
    cat, sat = tok.encode(" cat"), tok.encode(" sat")
    if kind != "byte_level":
        cat, sat = [tok.token_to_id("▁cat")], [tok.token_to_id("▁sat")]
    script = cat + [1] + sat  # a generated BOS is not an EOS: it shows, as the tokenizer writes it
    result, pieces = run(tok, "The", script, add_bos=True)
    prompt_ids = result.prompt_ids[0]
    assert prompt_ids[0] == 1
    assert tok.decode(prompt_ids) + result.text == tok.decode(prompt_ids + script)
    assert "<s>" in result.text and "".join(pieces) == result.text
    ended, pieces = run(tok, "The", cat + [2] + sat)  # EOS ends the row and is not text
    assert ended.finish_reasons == ["eos"] and ended.text == " cat" == "".join(pieces)


# ------------------------------------------------------------------ properties over id sequences
def _ids_strategy(tok: Tokenizer) -> st.SearchStrategy[list[int]]:
    decodable = sorted(set(range(tok.vocab_size)) - tok.unassigned_ids)
    char_bytes = st.characters(codec="utf-8").map(lambda c: [byte_id(tok, b) for b in c.encode()])
    pieces = st.one_of(
        st.sampled_from(decodable).map(lambda i: [i]),
        char_bytes,  # a whole character as byte tokens
        char_bytes.map(lambda ids: ids[:-1] or ids),  # a character cut short
        st.sampled_from(range(256)).map(lambda b: [byte_id(tok, b)]),  # any single byte
    )
    return st.lists(pieces, min_size=1, max_size=8).map(lambda chunks: [i for c in chunks for i in c][:16])


PROMPTS = st.text(alphabet=st.sampled_from(list("The cat sat é🙂日\n!")), min_size=1, max_size=12)


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=50)
@given(data=st.data())
def test_text_and_stream_match_the_decoded_ids(kind, data):
    tok = tokenizer(kind)
    prompt = data.draw(PROMPTS, label="prompt")
    prompt_ids = tok.encode(prompt)
    if not prompt_ids:
        return
    script = data.draw(_ids_strategy(tok), label="script")
    result, pieces = run(tok, prompt, script)
    text, reason = expected_text(tok, prompt_ids, script, [])
    assert (result.text, result.finish_reasons[0]) == (text, reason)
    generated = result.tokens[0][:-1] if reason == "eos" else result.tokens[0]
    full, before = tok.decode(prompt_ids + generated), tok.decode(prompt_ids)
    if full.startswith(before):
        assert before + result.text == full
        if before == prompt:  # the tokenizer round-trips the prompt
            assert prompt + result.text == full
    assert "".join(pieces) == result.text and all(pieces)


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=50)
@given(data=st.data())
def test_stop_strings_cut_at_their_first_occurrence(kind, data):
    tok = tokenizer(kind)
    prompt = data.draw(PROMPTS, label="prompt")
    prompt_ids = tok.encode(prompt)
    if not prompt_ids:
        return
    script = data.draw(_ids_strategy(tok), label="script")
    whole = continuation(tok, prompt_ids, script)
    stop_strategy = st.text(alphabet=st.sampled_from(list(" cat🙂\ufffd")), min_size=1, max_size=3)
    if whole:
        i = data.draw(st.integers(0, len(whole) - 1), label="start")
        stop_strategy = st.one_of(stop_strategy, st.integers(i + 1, min(len(whole), i + 4)).map(lambda j: whole[i:j]))
    stop = data.draw(st.lists(stop_strategy, min_size=1, max_size=2), label="stop")
    result, pieces = run(tok, prompt, script, stop=stop)
    text, reason = expected_text(tok, prompt_ids, script, stop)
    assert (result.text, result.finish_reasons[0]) == (text, reason)
    assert not any(s in result.text for s in stop)
    assert "".join(pieces) == result.text and all(pieces)
