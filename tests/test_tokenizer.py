"""llmbook.tokenizer on a small byte-level BPE trained in the test."""

from __future__ import annotations

import json
from functools import lru_cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmbook.tokenizer import Tokenizer, bytes_to_unicode
from model_helpers import make_tokenizer

TEXTS = [
    "The cat sat on the mat.",
    "Héllo wörld! Ça va? naïve café",
    "日本語のテキスト and emoji 🙂🚀",
    "  leading spaces\n\ttabs and\r\nnewlines  ",
    "unseen words: zyxwvut, Ωμέγα, привет",
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer(make_tokenizer(), bos_token_id=1, eos_token_id=2, pad_token_id=0)


def test_byte_table_is_a_bijection():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256)) and len(set(table.values())) == 256
    assert table[ord("A")] == "A" and table[ord(" ")] == "Ġ"


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_and_token_bytes(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert b"".join(tok.token_bytes(i) for i in ids) == text.encode("utf-8")


@lru_cache(maxsize=1)
def make_tokenizer_cached():
    return make_tokenizer()


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=0, max_size=40))
def test_token_bytes_concatenate_to_utf8_for_any_text(text):
    tok = Tokenizer(make_tokenizer_cached())
    ids = tok.encode(text)
    assert b"".join(tok.token_bytes(i) for i in ids) == text.encode("utf-8")
    assert tok.decode(ids) == text


def test_some_tokens_are_partial_utf8_characters(tok):
    # A byte-level vocabulary holds every single byte, including continuation bytes of multi-byte
    # characters, so token_bytes can be a fragment that is not valid UTF-8 on its own.
    fragment = tok.token_to_id(bytes_to_unicode()[0xA9])  # second byte of 'é' (c3 a9)
    assert tok.token_bytes(fragment) == b"\xa9"
    with pytest.raises(UnicodeDecodeError):
        tok.token_bytes(fragment).decode("utf-8")


def test_special_tokens(tok):
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 0)
    assert tok.special_ids == {0, 1, 2, 3}
    assert tok.token_bytes(2) == b"</s>" and tok.id_to_token(3) == "<|eot|>"
    assert tok.encode("a b", add_bos=True) == [1, *tok.encode("a b")]
    assert tok.decode([1, *tok.encode("hi")], skip_special_tokens=True) == "hi"
    assert tok.decode([*tok.encode("hi"), 2]) == "hi</s>"
    no_bos = Tokenizer(make_tokenizer())
    assert no_bos.bos_token_id is None and not no_bos.adds_bos_by_default
    with pytest.raises(ValueError, match="no BOS token"):
        no_bos.encode("x", add_bos=True)


def test_encode_batch_matches_encode(tok):
    assert tok.encode_batch(TEXTS) == [tok.encode(t) for t in TEXTS]
    assert tok.encode_batch(TEXTS[:2], add_bos=True) == [tok.encode(t, add_bos=True) for t in TEXTS[:2]]


def test_bad_arguments(tok):
    with pytest.raises(ValueError, match=rf"i must be a token id in \[0, {tok.vocab_size - 1}\]"):
        tok.id_to_token(tok.vocab_size)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tok.token_to_id("no-such-token")
    with pytest.raises(ValueError, match="text must be a str"):
        tok.encode(b"bytes")
    with pytest.raises(ValueError, match="sequence of str"):
        tok.encode_batch("not a list")
    with pytest.raises(ValueError, match="ids must be token ids"):
        tok.decode([tok.vocab_size])
    with pytest.raises(ValueError, match="bos_token_id must be a token id"):
        Tokenizer(make_tokenizer(), bos_token_id=-1)


def test_save_and_load_with_tokenizer_config(tok, tmp_path):
    tok.save(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["bos_token"] == "<s>" and config["eos_token"] == "</s>" and config["pad_token"] == "<pad>"
    again = Tokenizer.from_file(tmp_path)
    assert (again.bos_token_id, again.eos_token_id, again.pad_token_id) == (1, 2, 0)
    assert all(again.encode(t) == tok.encode(t) for t in TEXTS)
    # special tokens given as {"content": ...} dicts, as many checkpoints write them
    config["eos_token"] = {"content": "<|eot|>", "special": True}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert Tokenizer.from_file(tmp_path / "tokenizer.json").eos_token_id == 3
    config["eos_token"] = "<missing>"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="'<missing>' is not a token"):
        Tokenizer.from_file(tmp_path)
    with pytest.raises(ValueError, match="tokenizer file not found"):
        Tokenizer.from_file(tmp_path / "nope.json")


def test_bos_found_from_post_processor(tmp_path):
    from tokenizers import processors

    raw = make_tokenizer()
    raw.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok = Tokenizer(raw)
    assert tok.bos_token_id == 1 and tok.adds_bos_by_default
    assert tok.encode("hi")[0] != 1  # encode never adds it unless asked


def test_transformers_reads_the_saved_tokenizer_the_same_way(tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok.save(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for text in TEXTS:
        assert hf.encode(text, add_special_tokens=False) == tok.encode(text)
    assert hf.eos_token_id == 2 and hf.bos_token_id == 1 and hf.pad_token_id == 0


def _with_hole(raw, token_id: int):
    """The tokenizer with its last vocabulary token moved to ``token_id`` (ids in between name nothing)."""
    from tokenizers import Tokenizer as HFTokenizer

    spec = json.loads(raw.to_str())
    vocab = spec["model"]["vocab"]
    last = max(vocab, key=vocab.get)
    vocab[last] = token_id
    return HFTokenizer.from_str(json.dumps(spec)), last


def test_vocabulary_with_holes_sizes_by_the_largest_id():
    # `tokenizers` counts tokens; an embedding needs largest id + 1 rows, and the ids in the hole name nothing.
    raw, last = _with_hole(make_tokenizer(), 330)
    tok = Tokenizer(raw)
    assert raw.get_vocab_size(with_added_tokens=True) == 320
    assert tok.vocab_size == len(tok) == 331
    assert tok.unassigned_ids == frozenset(range(319, 330))
    assert tok.decode([330]) == raw.decode([330]) == last.replace("Ġ", " ")
    assert tok.id_to_token(330) == last
    with pytest.raises(ValueError, match="id 325 names no token"):
        tok.decode([5, 325])
    with pytest.raises(ValueError, match="i=325 is not assigned to any token"):
        tok.id_to_token(325)
    assert Tokenizer(make_tokenizer()).unassigned_ids == frozenset()


def test_decode_refuses_ids_past_the_vocabulary_that_tokenizers_drops(tok):
    # `tokenizers` (and so transformers) decodes an unknown id to '' without a word; llmbook names it.
    assert tok.backend.decode([5, 350, 6]) == tok.decode([5, 6])
    with pytest.raises(ValueError, match=r"ids must be token ids in \[0, 319\], got 350"):
        tok.decode([5, 350, 6])


def test_added_tokens_in_tokenizer_config(tmp_path):
    directory = tmp_path / "tok"
    Tokenizer(make_tokenizer(), eos_token_id=2).save(directory)
    config = json.loads((directory / "tokenizer_config.json").read_text())

    def declare(entries):
        (directory / "tokenizer_config.json").write_text(json.dumps({**config, "added_tokens_decoder": entries}))

    entry = lambda content: {"content": content, "special": True, "lstrip": False, "rstrip": False,  # noqa: E731
                             "normalized": False, "single_word": False}
    declare({"3": entry("<|eot|>"), "320": entry("<|im_start|>"), "321": entry("<|im_end|>")})
    tok = Tokenizer.from_file(directory)  # as transformers: missing tokens are added, here at their declared ids
    assert tok.vocab_size == 322 and tok.token_to_id("<|im_end|>") == 321
    assert tok.encode("a<|im_start|>b") == [*tok.encode("a"), 320, *tok.encode("b")] and 321 in tok.special_ids
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(directory)
    assert hf.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [320, 321]
    # transformers would put these at id 320 whatever they declare; llmbook refuses the disagreement
    for entries, match in (({"325": entry("<gap>")}, "declares '<gap>' as id 325, .* it would be id 320"),
                           ({"3": entry("<other>")}, "gives id 3 to '<other>', but in tokenizer.json id 3 is '<\\|eot\\|>'"),
                           ({"7": entry("<|eot|>")}, "gives '<\\|eot\\|>' id 7, but tokenizer.json has it as id 3")):
        declare(entries)
        with pytest.raises(ValueError, match=match):
            Tokenizer.from_file(directory)
