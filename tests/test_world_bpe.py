import pytest

from llmbook.world import build_corpus
from llmbook.world.bpe import BOS, EOS, PAD, VOCAB_SIZE, train_tokenizer


@pytest.fixture(scope="module")
def corpora():
    train = [d.text for d in build_corpus(0, 4000).documents]
    held_out = [d.text for d in build_corpus(1, 400).documents]
    return train, held_out


@pytest.fixture(scope="module")
def tokenizer(corpora):
    return train_tokenizer(corpora[0])


def chars_per_token(tokenizer, texts):
    return sum(map(len, texts)) / sum(len(tokenizer.encode(t)) for t in texts)


def test_special_tokens_and_size(tokenizer):
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (0, 1, 2)
    assert [tokenizer.id_to_token(i) for i in range(3)] == [BOS, EOS, PAD]
    assert 1024 < tokenizer.vocab_size <= VOCAB_SIZE


def test_round_trip_and_bytes(tokenizer, corpora):
    for text in corpora[1][:100] + ["Zyx lives in Nowhere: 12345 ünïcode"]:
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids) == text
        assert b"".join(tokenizer.token_bytes(i) for i in ids) == text.encode()


def test_digits_are_single_tokens(tokenizer):
    for number in ["1692", "47", "908172"]:
        pieces = [tokenizer.decode([i]) for i in tokenizer.encode(number)]
        assert pieces == list(number)


def test_a_name_is_one_token_wherever_it_stands(tokenizer):
    # At a line start and after a space: the same single id (the space is a token of its own).
    from llmbook.world import default_splits

    for name in default_splits(0).train_people[:20]:
        (alone,) = tokenizer.encode(name)
        assert tokenizer.encode(f"Where does {name} live?")[2:4] == [tokenizer.encode(" ")[0], alone]
        assert alone in tokenizer.encode(f"lookup[{name}, town]")
    assert tokenizer.encode("in the town of a")[-1] != tokenizer.encode(" ")[0]  # lower case keeps its space


def test_training_is_deterministic(corpora, tokenizer):
    again = train_tokenizer(corpora[0])
    assert again.backend.to_str() == tokenizer.backend.to_str()


def test_compression_plateaus_near_the_chosen_size(corpora, tokenizer):
    train, held_out = corpora
    chosen = chars_per_token(tokenizer, held_out)
    smaller = chars_per_token(train_tokenizer(train, VOCAB_SIZE // 4), held_out)
    larger = chars_per_token(train_tokenizer(train, VOCAB_SIZE * 2), held_out)
    assert chosen > 2.6, "most words and names should be single tokens"
    assert chosen > smaller * 1.2, "a quarter of the vocabulary compresses clearly worse"
    assert larger == pytest.approx(chosen), "BPE saturates below the cap: every word is already one token"


@pytest.mark.parametrize("bad", [0, 299, 10**6, 2.5, True])
def test_bad_vocab_size(bad):
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["a b c"], bad)
