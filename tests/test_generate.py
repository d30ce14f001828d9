"""llmbook.generate: batching, stopping, seeding, streaming and recorded probabilities."""

from __future__ import annotations

import pytest
import torch

from llmbook.generate import GenerationResult, generate, generate_ids, next_token_logits
from llmbook.tokenizer import Tokenizer
from model_helpers import make_pair

PROMPTS = ["The cat sat on", "Héllo", "Numbers 0123456789, punctuation and more words here"]


@pytest.fixture(scope="module")
def pair():
    return make_pair(seed=3)


def _greedy_reference(model, ids: list[int], steps: int) -> list[int]:
    """Plain full-recompute greedy decoding: the definition generate must reproduce."""
    x = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(steps):
            x = torch.cat([x, model(x)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return x[0, len(ids):].tolist()


def test_greedy_matches_full_recompute(pair):
    model, tok = pair
    ids = tok.encode(PROMPTS[0])
    result = generate_ids(model, [ids], max_new_tokens=30, temperature=0)
    assert result.tokens[0] == _greedy_reference(model, ids, 30)
    assert result.finish_reasons == ["length"] and len(set(result.tokens[0])) > 3
    assert result.token_probs[0] == [1.0] * 30  # greedy samples from a one-hot distribution


def test_batch_of_different_lengths_equals_each_alone(pair):
    model, tok = pair
    batch = generate(model, tok, PROMPTS, max_new_tokens=25, temperature=0, stop_at_eos=False)
    for i, prompt in enumerate(PROMPTS):
        alone = generate(model, tok, prompt, max_new_tokens=25, temperature=0, stop_at_eos=False)
        assert batch.tokens[i] == alone.tokens[0]
        assert batch.texts[i] == alone.text
    assert len({tuple(t) for t in batch.tokens}) == 3


def test_seeded_sampling_is_reproducible(pair):
    model, tok = pair
    kwargs = dict(max_new_tokens=30, temperature=1.0, top_p=0.95, stop_at_eos=False)
    a = generate(model, tok, PROMPTS, seed=7, **kwargs)
    b = generate(model, tok, PROMPTS, seed=7, **kwargs)
    c = generate(model, tok, PROMPTS, seed=8, **kwargs)
    assert a.tokens == b.tokens and a.texts == b.texts
    assert a.tokens != c.tokens
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert generate(model, tok, "x", generator=g1, **kwargs).tokens == generate(model, tok, "x", generator=g2, **kwargs).tokens


def test_token_probs_are_the_sampled_distribution(pair):
    model, tok = pair
    ids = tok.encode(PROMPTS[1])
    result = generate_ids(model, [ids], max_new_tokens=12, temperature=0.8, top_k=20, seed=1, record_distributions=5)
    dist = result.distributions
    assert dist.shape == (1, 5, model.config.vocab_size)
    torch.testing.assert_close(dist.sum(-1), torch.ones(1, 5))
    assert ((dist > 0).sum(-1) <= 20).all()  # top-k kept at most 20 tokens
    # Recompute each step's distribution from scratch, without the cache.
    x = torch.tensor([ids + result.tokens[0]])
    with torch.no_grad():
        logits = model(x)[0, len(ids) - 1:-1] / 0.8
    top = logits.topk(20, dim=-1)
    expected = torch.full_like(logits, float("-inf")).scatter(-1, top.indices, top.values).softmax(-1)
    chosen = torch.tensor(result.tokens[0])
    torch.testing.assert_close(torch.tensor(result.token_probs[0]), expected.gather(1, chosen[:, None])[:, 0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(dist[0], expected[:5], rtol=1e-4, atol=1e-6)


def test_eos_ends_a_row(pair):
    model, tok = pair
    ids = tok.encode(PROMPTS[0])
    free = generate_ids(model, [ids], max_new_tokens=20, temperature=0).tokens[0]
    eos = free[6]
    first = free.index(eos)
    result = generate_ids(model, [ids, tok.encode(PROMPTS[2])], max_new_tokens=20, temperature=0, eos_token_ids=[eos])
    assert result.tokens[0] == free[: first + 1] and result.finish_reasons[0] == "eos"
    assert len(result.token_probs[0]) == first + 1


def test_stop_string_cuts_text_and_streaming_matches(pair):
    model, tok = pair
    free = generate(model, tok, PROMPTS, max_new_tokens=30, temperature=0, stop_at_eos=False)
    stop = free.texts[0][8:11]
    assert len(stop) == 3
    pieces: dict[int, list[str]] = {0: [], 1: [], 2: []}
    result = generate(model, tok, PROMPTS, max_new_tokens=30, temperature=0, stop_at_eos=False, stop=[stop],
                      stream=lambda row, piece: pieces[row].append(piece))
    cut = free.texts[0].find(stop)
    assert result.texts[0] == free.texts[0][:cut] and result.finish_reasons[0] == "stop"
    assert len(result.tokens[0]) < 30
    for row in range(3):
        assert "".join(pieces[row]) == result.texts[row]
        assert all(pieces[row])  # no empty pieces
        if stop not in free.texts[row]:
            assert result.texts[row] == free.texts[row] and result.finish_reasons[row] == "length"
    assert len(pieces[0]) > 1  # it streamed as it went


def test_streaming_with_eos(pair):
    model, tok = pair
    kwargs = dict(max_new_tokens=40, temperature=1.0, seed=4)
    free = generate(model, tok, "Héllo wörld", stop_at_eos=False, **kwargs).tokens[0]
    eos = free[10]  # declare a token the model will produce to be EOS
    first = min(free.index(t) for t in (eos, 2) if t in free)  # config.json's EOS (2) counts too
    tok_eos = Tokenizer(tok.backend, bos_token_id=1, eos_token_id=eos)
    pieces: list[str] = []
    result = generate(model, tok_eos, "Héllo wörld", stream=lambda row, piece: pieces.append(piece), **kwargs)
    assert isinstance(result, GenerationResult) and result.finish_reasons == ["eos"]
    assert result.tokens[0] == free[: first + 1]
    assert result.text == tok.decode(free[:first])  # EOS ends the row and is not part of the text
    assert "".join(pieces) == result.text


def test_add_bos_and_zero_tokens(pair):
    model, tok = pair
    assert generate(model, tok, "hi", max_new_tokens=1, add_bos=True).prompt_ids[0][0] == tok.bos_token_id
    assert generate(model, tok, "hi", max_new_tokens=1).prompt_ids[0][0] != tok.bos_token_id
    empty = generate(model, tok, ["a", "b"], max_new_tokens=0)
    assert empty.tokens == [[], []] and empty.texts == ["", ""]


def test_suppressed_ids_are_never_sampled(pair):
    model, tok = pair
    ids = tok.encode(PROMPTS[0])
    free = generate_ids(model, [ids], max_new_tokens=20, temperature=0).tokens[0]
    banned = sorted(set(free))
    result = generate_ids(model, [ids], max_new_tokens=20, temperature=5.0, seed=0, record_distributions=20,
                          suppress_token_ids=banned)
    assert not set(result.tokens[0]) & set(banned)
    assert (result.distributions[0][:, banned] == 0).all()  # the distribution sampled from excludes them
    greedy = generate_ids(model, [ids], max_new_tokens=5, temperature=0, suppress_token_ids=[free[0]])
    assert greedy.tokens[0][0] != free[0]
    vocab = model.config.vocab_size
    with pytest.raises(ValueError, match=rf"suppress_token_ids must be token ids in \[0, {vocab - 1}\], got {vocab}"):
        generate_ids(model, [ids], suppress_token_ids=[vocab])
    with pytest.raises(ValueError, match="must leave at least one"):
        generate_ids(model, [ids], suppress_token_ids=list(range(vocab)))


def test_bad_arguments(pair):
    model, tok = pair
    context = model.config.max_position_embeddings
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        generate(model, tok, "", max_new_tokens=3)
    with pytest.raises(ValueError, match="non-empty list of str"):
        generate(model, tok, [], max_new_tokens=3)
    with pytest.raises(ValueError, match="max_new_tokens must be an integer >= 0"):
        generate(model, tok, "hi", max_new_tokens=-1)
    with pytest.raises(ValueError, match=rf"\+ max_new_tokens \(10\) must be <= max_position_embeddings \({context}\)"):
        generate_ids(model, [[5] * (context - 5)], max_new_tokens=10)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, tok, "hi", top_p=1.5)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, tok, "hi", temperature=-1)
    with pytest.raises(ValueError, match="stop must be a list of non-empty strings"):
        generate(model, tok, "hi", stop=[""])
    with pytest.raises(ValueError, match=r"token ids outside \[0, "):
        generate_ids(model, [[context * 1000]], max_new_tokens=1)
    with pytest.raises(ValueError, match="eos_token_ids must be token ids"):
        generate_ids(model, [[5]], eos_token_ids=[-1])
    with pytest.raises(ValueError, match="tokenizer must be a llmbook Tokenizer"):
        generate(model, None, "hi")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_generate_on_cuda_matches_cpu_greedy(pair):
    from llmbook.model import CausalLM

    model, tok = pair
    gpu = CausalLM(model.config, device="cuda").eval()
    gpu.load_state_dict(model.state_dict())
    cpu_result = generate(model, tok, PROMPTS, max_new_tokens=20, temperature=0, stop_at_eos=False)
    gpu_result = generate(gpu, tok, PROMPTS, max_new_tokens=20, temperature=0, stop_at_eos=False)
    assert gpu_result.tokens == cpu_result.tokens
    sampled = [generate(gpu, tok, PROMPTS, max_new_tokens=20, seed=3).tokens for _ in range(2)]
    assert sampled[0] == sampled[1]  # the seeded CUDA generator reproduces


def test_next_token_logits_is_the_last_position_and_what_greedy_picks():
    from llmbook.hub import load

    model, tokenizer = load("tinyworld-draft", device="cpu")
    prompt = "Once upon a time, in the town of"
    logits = next_token_logits(model, tokenizer, prompt)
    ids = tokenizer.encode(prompt, add_bos=True)
    with torch.no_grad():
        expected = model(torch.tensor([ids]))[0, -1].float()
    assert logits.shape == (tokenizer.vocab_size,) and logits.dtype == torch.float32 and logits.device.type == "cpu"
    assert torch.equal(logits, expected)
    greedy = generate(model, tokenizer, prompt, max_new_tokens=1, temperature=0.0, add_bos=True)
    assert greedy.tokens[0][0] == int(logits.argmax())


def test_next_token_logits_bad_prompt():
    from llmbook.hub import load

    model, tokenizer = load("tinyworld-draft", device="cpu")
    with pytest.raises(ValueError, match="prompt must be a str"):
        next_token_logits(model, tokenizer, ["a list"])
    with pytest.raises(ValueError, match="prompt encodes to no tokens"):
        next_token_logits(model, tokenizer, "", add_bos=False)


# ---------------------------------------------------------------- ids the tokenizer does not know
@pytest.fixture(scope="module")
def padded():
    """A 384-row model with the 320-token tokenizer (Qwen2-style padded embedding)."""
    model, tok = make_pair(seed=5, model_vocab=384)
    assert model.config.vocab_size == 384 and tok.vocab_size == 320
    return model, tok


def test_padded_embedding_would_sample_ids_past_the_tokenizer(padded):
    # The premise: at high temperature the raw model does pick ids 320..383, which have no text.
    model, tok = padded
    raw = generate_ids(model, tok.encode_batch(PROMPTS), max_new_tokens=40, temperature=50.0, seed=0)
    assert max(max(row) for row in raw.tokens) >= 320


@pytest.mark.parametrize("seed", range(4))
def test_padded_embedding_never_loses_a_batch(padded, seed):
    model, tok = padded
    pieces: dict[int, list[str]] = {0: [], 1: [], 2: []}
    kwargs = dict(max_new_tokens=40, temperature=50.0, seed=seed, stop_at_eos=False, record_distributions=3)
    for extra in ({}, {"stream": lambda row, piece: pieces[row].append(piece), "stop": ["zq"]}):
        result = generate(model, tok, PROMPTS, **kwargs, **extra)
        assert all(len(row) == 40 and max(row) < 320 for row in result.tokens)
        assert (result.distributions[..., 320:] == 0).all()
        for p, row, text in zip(result.prompt_ids, result.tokens, result.texts):
            assert tok.decode(p) + text == tok.decode(p + row)
    assert all("".join(pieces[i]) == result.texts[i] for i in range(3))


def test_eos_past_the_tokenizer_still_ends_a_row():
    # An EOS id the tokenizer lacks is kept samplable: it ends the row and is never decoded.
    from model_helpers import scripted_model

    _, tok = make_pair(model_vocab=384)
    model = scripted_model(384, [[*tok.encode(" cat"), 350, 5], [*tok.encode(" cat"), 340, 5]])
    model.config.eos_token_id = 350
    result = generate(model, tok, ["The", "The"], max_new_tokens=4, temperature=0)
    assert result.tokens[0][-1] == 350 and result.finish_reasons[0] == "eos" and result.texts[0] == " cat"
    assert 340 not in result.tokens[1] and result.finish_reasons[1] == "length"  # 340 is masked, not EOS


def test_vocabulary_holes_are_never_sampled():
    import json

    from tokenizers import Tokenizer as HFTokenizer

    from model_helpers import make_tokenizer

    spec = json.loads(make_tokenizer().to_str())
    vocab = spec["model"]["vocab"]
    vocab[max(vocab, key=vocab.get)] = 330  # ids 319..329 name no token now
    tok = Tokenizer(HFTokenizer.from_str(json.dumps(spec)), bos_token_id=1, eos_token_id=2)
    model, _ = make_pair(seed=5, model_vocab=384)
    result = generate(model, tok, PROMPTS, max_new_tokens=40, temperature=50.0, seed=1, stop_at_eos=False)
    seen = {t for row in result.tokens for t in row}
    assert not seen & tok.unassigned_ids and max(seen) <= 330


def test_next_token_logits_masks_ids_without_text(padded):
    model, tok = padded
    logits = next_token_logits(model, tok, "The cat", add_bos=True)
    with torch.no_grad():
        raw = model(torch.tensor([tok.encode("The cat", add_bos=True)]))[0, -1].float()
    assert logits.shape == (384,)
    assert torch.equal(logits[:320], raw[:320]) and torch.isinf(logits[320:]).all()
    top = logits.topk(400 - 80).indices  # every finite logit names a token that decodes
    assert int(top.max()) < 320


def test_world_complete_with_a_padded_embedding(padded):
    from llmbook.world.evaluate import complete

    model, tok = padded
    texts = complete(model, tok, PROMPTS, max_new_tokens=20, temperature=50.0, stop=["."], batch_size=2)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
