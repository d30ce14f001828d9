"""The TinyWorld tokenizer: byte-level BPE trained on the training corpus with Hugging Face ``tokenizers``.

Choices, and why:

- **Vocabulary size: up to 2048, and BPE stops by itself before that.** The world's
  language is small: with digits split and names split from their spaces (below), training
  on the default corpus runs out of merges at about 1,500 entries, when every word and name
  of the world has become one token. Held-out text then takes about 2.69 characters per
  token, against 1.94 with a 512-entry vocabulary and 2.48 with 1024; a larger cap adds
  nothing. (``tests/test_world_bpe.py`` re-measures the saturation.)
- **Digits split one by one** before BPE (as Llama 3 and Qwen2 do). With merged digits,
  "1692" and "1693" share no token, and the arithmetic chapters could not teach column
  arithmetic; with single digits, a scratchpad step is a short, regular token pattern.
- **A space before a capital letter is its own piece** (``CAPITAL_SPACE``). Without it, BPE
  learns every name twice, ``Mira`` (at a line start, in a fact line or a card) and
  `` Mira`` (inside a sentence), as two unrelated ids, and what the model learns about a
  person under one id does not reach the other: copying a name from a question into
  ``lookup[...]`` failed because the question held the other form. Splitting the space off
  makes every name and town one id wherever it stands (measured on the default corpus:
  vocabulary 1,955 -> about 1,500 entries, 13.6% more tokens per document).
- **Byte level**, so any text, also a model's own mistakes, can be encoded with no unknown token.
- **Special tokens** ``<|bos|>``, ``<|eos|>`` and ``<|pad|>`` mark document boundaries and padding.
"""

from __future__ import annotations

from collections.abc import Iterable

import tokenizers
from tokenizers import Regex, decoders, models, pre_tokenizers, trainers

from llmbook.tokenizer import Tokenizer

VOCAB_SIZE = 2048
BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
SPECIAL_TOKENS = (BOS, EOS, PAD)
# A space followed by a capital letter: split off as a piece of its own, so " Mira" and "Mira"
# share the token "Mira" (the lookahead keeps the capital in the next piece).
CAPITAL_SPACE = r" (?=[A-Z])"


def train_tokenizer(texts: Iterable[str], vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    """Train the book's byte-level BPE on ``texts``; the special tokens take ids 0, 1, 2."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or not 300 <= vocab_size <= 65536:
        # 256 byte tokens + 3 special tokens is the smallest vocabulary that can encode anything.
        raise ValueError(f"vocab_size must be an int in [300, 65536], got {vocab_size!r}")
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CAPITAL_SPACE), behavior="isolated"),
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = list(texts)
    if not texts:
        raise ValueError("texts must contain at least one document")
    backend.train_from_iterator(texts, trainer)
    ids = {token: backend.token_to_id(token) for token in SPECIAL_TOKENS}
    return Tokenizer(
        backend,
        bos_token_id=ids[BOS],
        eos_token_id=ids[EOS],
        pad_token_id=ids[PAD],
        tokenizer_config={"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "add_bos_token": False},
    )
