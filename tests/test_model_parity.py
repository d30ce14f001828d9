"""Same weights, same numbers: llmbook's model against Hugging Face transformers."""

from __future__ import annotations

import pytest
import torch

from llmbook.hub import load_model, save_pretrained
from model_helpers import hf_configs, make_hf_model

transformers = pytest.importorskip("transformers")

NAMES = list(hf_configs())


@pytest.fixture(scope="module", params=NAMES)
def pair(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    hf = make_hf_model(request.param, directory)
    return request.param, hf, load_model(directory, device="cpu"), directory


@pytest.mark.parametrize("length", [1, 7, 33, 96])
def test_logits_match_transformers(pair, length):
    name, hf, ours, _ = pair
    ids = torch.randint(0, hf.config.vocab_size, (2, length), generator=torch.Generator().manual_seed(length))
    with torch.no_grad():
        expected = hf(ids).logits
        got = ours(ids)
    assert got.shape == expected.shape == (2, length, hf.config.vocab_size)
    assert expected.abs().max() > 1.0  # the comparison is not between two near-zero tensors
    assert (got - expected).abs().max().item() <= 1e-4, name


def test_config_round_trip(pair):
    name, hf, ours, _ = pair
    assert ours.config.tie_word_embeddings == bool(hf.config.tie_word_embeddings)
    if name == "qwen2_bias":
        assert ours.model.layers[0].self_attn.q_proj.bias is not None
        assert ours.model.layers[0].self_attn.o_proj.bias is None
    if name == "llama3_rope":
        assert ours.config.rope_scaling["rope_type"] == "llama3"
    if name == "llama_gqa_tied":
        assert ours.lm_head.weight is ours.model.embed_tokens.weight


def _greedy_no_cache(model, ids: torch.Tensor, steps: int) -> torch.Tensor:
    for _ in range(steps):
        nxt = model(ids)[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
    return ids


def _greedy_with_cache(model, ids: torch.Tensor, steps: int) -> torch.Tensor:
    cache = model.new_cache(ids.shape[0], ids.shape[1] + steps)
    logits = model(ids, cache=cache, last_only=True)
    out = ids
    for _ in range(steps):
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        out = torch.cat([out, nxt], dim=1)
        logits = model(nxt, cache=cache)
    return out


def test_greedy_cache_equals_recompute_and_transformers(pair):
    name, hf, ours, _ = pair
    prompt = torch.randint(4, hf.config.vocab_size, (3, 9), generator=torch.Generator().manual_seed(1))
    steps = 40
    with torch.no_grad():
        cached = _greedy_with_cache(ours, prompt, steps)
        recomputed = _greedy_no_cache(ours, prompt, steps)
        reference = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=steps,
                                min_new_tokens=steps, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert all(len(set(row[9:].tolist())) > 3 for row in cached)  # a model stuck on one token would make this test vacuous
    assert torch.equal(cached, recomputed), name
    assert torch.equal(cached, reference), name


def test_saved_model_loads_in_transformers(pair, tmp_path):
    name, hf, ours, _ = pair
    save_pretrained(ours, None, tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(reloaded).__name__ == type(hf).__name__
    ids = torch.randint(0, hf.config.vocab_size, (1, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (reloaded(ids).logits - ours(ids)).abs().max().item() <= 1e-4
    ours_again = load_model(tmp_path, device="cpu")
    with torch.no_grad():
        assert torch.equal(ours_again(ids), ours(ids))


def test_batched_generate_matches_transformers_left_padding(pair):
    from llmbook.generate import generate_ids

    name, hf, ours, _ = pair
    g = torch.Generator().manual_seed(4)
    prompts = [torch.randint(4, hf.config.vocab_size, (n,), generator=g).tolist() for n in (11, 4, 7)]
    steps = 20
    result = generate_ids(ours, prompts, max_new_tokens=steps, temperature=0)
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        reference = hf.generate(ids, attention_mask=mask, max_new_tokens=steps, min_new_tokens=steps,
                                do_sample=False, eos_token_id=None, pad_token_id=0)
    assert result.tokens == reference[:, width:].tolist(), name
