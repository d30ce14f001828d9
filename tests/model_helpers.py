"""Shared builders for the model tests: tiny random transformers models saved in HF layout, and a tiny tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

VOCAB = 320  # >= 256 byte tokens + 4 special tokens + some merges

CORPUS = [
    "The cat sat on the mat. The dog sat on the log.",
    "Héllo wörld! Ça va? naïve café, 日本語のテキスト, emoji 🙂 and more.",
    "def f(x):\n    return x * 2  # tabs\tand newlines\n",
    "Numbers 0123456789, punctuation ,.;:!?()[]{} and 'quotes' \"too\".",
] * 5


def hf_configs() -> dict:
    """Tiny transformers configs: (a) Llama GQA + tied, (b) Llama llama3 rope scaling, (c) Qwen2 with q/k/v bias."""
    from transformers import LlamaConfig, Qwen2Config

    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=96, rms_norm_eps=1e-5)
    return {
        "llama_gqa_tied": LlamaConfig(**common, num_key_value_heads=2, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2),
        "llama3_rope": LlamaConfig(**common, num_key_value_heads=1, rope_theta=500000.0, bos_token_id=1, eos_token_id=2,
                                   rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
        "qwen2_bias": Qwen2Config(**common, num_key_value_heads=2, rope_theta=1000000.0, tie_word_embeddings=False,
                                  bos_token_id=None, eos_token_id=3),
    }


def make_hf_model(name: str, directory: Path, seed: int = 0):
    """A random transformers model for ``hf_configs()[name]``, every tensor (biases and norms too) randomized, saved to ``directory``."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_configs()[name]).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))  # not all ones, so a swapped norm would show
            else:
                p.copy_(0.15 * torch.randn_like(p))  # well above the 0.02 init: greedy decoding then wanders instead of looping on one token
    model.save_pretrained(directory)
    return model


def make_tokenizer(vocab_size: int = VOCAB) -> HFTokenizer:
    """A byte-level BPE trained on CORPUS with special tokens <pad>=0, <s>=1, </s>=2, <|eot|>=3."""
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>", "<|eot|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def make_sp_tokenizer(style: str = "llama2") -> HFTokenizer:
    """A SentencePiece-style BPE with byte fallback, trained on CORPUS without its emoji (so emoji fall back to bytes).

    ``<unk>``=0, ``<s>``=1, ``</s>``=2, then the 256 byte tokens ``<0x00>``..``<0xFF>``, then the pieces
    (``'▁The'``, ``'▁cat'``, ...). ``style``: ``"llama2"`` (normalizer prepends '▁' and turns spaces into
    '▁'; decoder Replace/ByteFallback/Fuse/Strip, as Llama-2's tokenizer.json) or ``"metaspace"``
    (Metaspace pre-tokenizer with prepend_scheme 'first', same decoder, as Mistral's).
    """
    from tokenizers import normalizers

    if style not in ("llama2", "metaspace"):
        raise ValueError(f"style must be 'llama2' or 'metaspace', got {style!r}")
    trainer_tok = HFTokenizer(models.BPE())
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    corpus = [c.replace("🙂", "") for c in CORPUS]
    trainer_tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=180, show_progress=False))
    trained = json.loads(trainer_tok.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for token, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tok = HFTokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    if style == "llama2":
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    return tok


def make_pair(seed: int = 0, *, tie: bool = False, max_position_embeddings: int = 128, model_vocab: int | None = None):
    """A random llmbook model (weights scaled up so greedy text varies) with the tiny tokenizer.

    ``model_vocab``: embedding rows (default: the tokenizer's 320); more rows pad the embedding
    past the tokenizer, as Qwen2 and many fine-tunes do.
    """
    from llmbook.model import CausalLM, ModelConfig
    from llmbook.tokenizer import Tokenizer

    tokenizer = Tokenizer(make_tokenizer(), bos_token_id=1, eos_token_id=2, pad_token_id=0)
    config = ModelConfig(vocab_size=model_vocab or tokenizer.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_position_embeddings,
                         tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    model = CausalLM(config).eval()
    model.reset_parameters(std=0.15)
    return model, tokenizer


def scripted_model(vocab_size: int, scripts: list[list[int]], max_position_embeddings: int = 512):
    """A CausalLM whose greedy choice at step t of row r is ``scripts[r][t]`` (then token 0), whatever the input.

    Drives ``generate`` (temperature 0) through exactly the ids a test chooses: for testing text,
    stop strings and streaming independently of what a random model happens to sample.
    """
    from llmbook.model import CausalLM, ModelConfig

    class Scripted(CausalLM):
        def forward(self, input_ids, cache=None, attention_mask=None, *, last_only=False):  # noqa: ANN001
            step = self.calls
            self.calls += 1
            if cache is not None:
                cache.advance(input_ids.shape[1], None if attention_mask is None else attention_mask.bool())
            logits = torch.zeros(input_ids.shape[0], 1, vocab_size)
            for row in range(input_ids.shape[0]):
                script = scripts[row]
                logits[row, 0, script[step] if step < len(script) else 0] = 10.0
            return logits

    config = ModelConfig(vocab_size=vocab_size, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                         num_attention_heads=1, max_position_embeddings=max_position_embeddings)
    model = Scripted(config).eval()
    model.calls = 0
    return model
