"""llmbook.speculative: exactness of speculative sampling, greedy equality, parity with transformers."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from llmbook.generate import generate_ids
from llmbook.hub import ASSETS_DIR, load
from llmbook.sampling import probabilities
from llmbook.text_stats import chi_square
from llmbook.speculative import (
    PromptLookupDraft, SpeculativeResult, early_exit_draft, expected_speedup, expected_tokens_per_round, speculative_generate, verify,
)


def chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """llmbook.text_stats.chi_square's p-value, on a distribution spread enough to test."""
    _, df, p = chi_square(counts, probs)
    assert df >= 3, "too few bins for a meaningful test: the distribution is nearly deterministic"
    return p


def _rounds(b: int, gamma: int, v: int, seed: int):
    """b independent rounds with random target/draft distributions (some tokens truncated away)."""
    g = torch.Generator().manual_seed(seed)
    p = torch.distributions.Dirichlet(torch.full((v,), 0.7)).sample((gamma + 1,))
    q = torch.distributions.Dirichlet(torch.full((v,), 0.7)).sample((gamma,))
    p[:, 0] = 0  # the target never writes token 0 (as after top-p), the draft sometimes does
    p = p / p.sum(-1, keepdim=True)
    p, q = p.expand(b, -1, -1), q.expand(b, -1, -1)
    draft = torch.stack([torch.multinomial(q[0, i], b, replacement=True, generator=g) for i in range(gamma)], 1)
    return p, q, draft, torch.rand(b, gamma, generator=g), torch.rand(b, generator=g)


def _first_two(n, token, draft):
    """The first emitted token, and the second where the round emitted two or more."""
    first = torch.where(n >= 1, draft[:, 0], token)
    has_second = n >= 1
    second = torch.where(n >= 2, draft[:, 1], token)[has_second]
    return first, second


def test_verify_emits_exactly_the_target_distribution():
    b, gamma, v = 200_000, 3, 6
    p, q, draft, u_accept, u_token = _rounds(b, gamma, v, seed=0)
    n, token = verify(p, q, draft, u_accept, u_token)
    first, second = _first_two(n, token, draft)
    assert chi_square_p_value(torch.bincount(first, minlength=v), p[0, 0]) > 1e-3
    assert chi_square_p_value(torch.bincount(second, minlength=v), p[0, 1]) > 1e-3
    # The acceptance rate is sum_x min(p, q) at each position (Leviathan et al., Theorem 3.5).
    alpha = torch.minimum(p[0, 0], q[0, 0]).sum()
    assert abs((n >= 1).float().mean() - alpha) < 0.005


def test_a_wrong_acceptance_rule_fails_the_same_test():
    """Resampling from p instead of the residual max(0, p - q) after a rejection over-weights the
    tokens the draft already proposes too often: the test must see it."""
    b, gamma, v = 200_000, 3, 6
    p, q, draft, u_accept, u_token = _rounds(b, gamma, v, seed=0)
    n, _ = verify(p, q, draft, u_accept, u_token)
    wrong = torch.multinomial(p[0, 0], b, replacement=True, generator=torch.Generator().manual_seed(1))
    first = torch.where(n >= 1, draft[:, 0], wrong)
    assert chi_square_p_value(torch.bincount(first, minlength=v), p[0, 0]) < 1e-6


def test_verify_greedy_and_shapes():
    p = torch.tensor([[[0.1, 0.6, 0.3], [0.5, 0.2, 0.3], [0.2, 0.2, 0.6]]])
    q = torch.full((1, 2, 3), 1 / 3)
    u = torch.zeros(1, 2)
    n, token = verify(p, q, torch.tensor([[1, 0]]), u, torch.zeros(1), greedy=True)
    assert (int(n), int(token)) == (2, 2)  # both accepted, bonus = argmax p_3
    n, token = verify(p, q, torch.tensor([[1, 2]]), u, torch.zeros(1), greedy=True)
    assert (int(n), int(token)) == (1, 0)  # second rejected, corrected to argmax p_2
    with pytest.raises(ValueError, match="shapes"):
        verify(p, q[:, :1], torch.tensor([[1, 0]]), u, torch.zeros(1))


@pytest.fixture(scope="module")
def pair():
    target, tok = load("tinyworld-main")
    draft, _ = load("tinyworld-draft")
    return target, draft, tok


PROMPTS = ["Once upon a time", "Question: Where does Mira live?\nAnswer:", '{"name": "', "Compute 12 + 7.\nAnswer:",
           "Mira has a dog", "Question: What is 3 * 4?\nThought:"]


@pytest.mark.parametrize("gamma", [1, 3, 5])
def test_greedy_speculative_output_is_the_targets_greedy_output(pair, gamma):
    target, draft, tok = pair
    for prompt in PROMPTS:
        ids = tok.encode(prompt, add_bos=True)
        ours = speculative_generate(target, draft, ids, gamma=gamma, max_new_tokens=40, temperature=0,
                                    eos_token_ids=tok.eos_token_id)
        plain = generate_ids(target, [ids], max_new_tokens=40, temperature=0, eos_token_ids=tok.eos_token_id)
        assert ours.tokens == plain.tokens[0], prompt
        assert 0 <= ours.acceptance_rate <= 1 and ours.target_calls < 1 + len(ours.tokens)
        # Each round emitted its accepted proposals, then one token of the target's.
        at = 0
        for n, k, proposal in zip(ours.accepted, ours.proposed, ours.drafted):
            assert len(proposal) == k and ours.tokens[at:at + n] == proposal[:n][:len(ours.tokens) - at]
            at += n + 1
        assert at >= len(ours.tokens)


def _sharpened(model):
    """A draft that proposes the target's likely tokens too often: the target with its output
    layer scaled by 3 (as if at a third of the temperature). Any draft keeps the output exact;
    this one rejects often enough (acceptance about 0.75 here) for a wrong residual to show."""
    sharp = copy.deepcopy(model)
    sharp.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone() * 3.0)
    return sharp


def _first_tokens(target, draft, ids, runs, settings):  # one whole generation per seed
    return torch.tensor([speculative_generate(target, draft, ids, gamma=2, max_new_tokens=1, seed=s,
                                              **settings).tokens[0] for s in range(runs)])


SETTINGS = dict(temperature=1.3, top_p=0.95)  # truncation applied identically to both models


@pytest.fixture(scope="module")
def town_case(pair):
    target, _, tok = pair
    ids = tok.encode("Once upon a time, in the town of ", add_bos=True)  # about 30 towns
    with torch.no_grad():
        exact = probabilities(target(torch.tensor([ids]))[0, -1:].float(), **SETTINGS)[0].double()
    return target, _sharpened(target), ids, exact


def test_sampled_speculative_output_has_the_targets_distribution(town_case):
    """250 seeded end-to-end runs: the first token's counts against the target's processed
    distribution (the loop, the caches and the processors, not only the rule)."""
    target, draft, ids, exact = town_case
    counts = torch.bincount(_first_tokens(target, draft, ids, 250, SETTINGS), minlength=exact.numel())
    assert chi_square_p_value(counts.double(), exact) > 1e-3


def test_the_rule_on_the_models_distributions_and_a_wrong_residual(town_case):
    """The same round 100,000 times at once with the two models' real distributions: exact with
    the residual norm(max(0, p - q)), and visibly wrong when a rejection draws from p instead
    (the classic mistake)."""
    target, draft, ids, exact = town_case
    with torch.no_grad():
        q = probabilities(draft(torch.tensor([ids]))[0, -1:].float(), **SETTINGS)[0].double()
    support = (exact > 0) | (q > 0)  # the tokens either model can write (about 40)
    p_s, q_s = exact[support], q[support]
    b, g = 100_000, torch.Generator().manual_seed(0)
    x = torch.multinomial(q_s, b, replacement=True, generator=g)[:, None]
    p_rows = torch.stack([p_s, p_s])[None].expand(b, -1, -1)  # p_2 unused for the first token
    u_accept, u_token = torch.rand(b, 1, generator=g).double(), torch.rand(b, generator=g).double()
    n, token = verify(p_rows, q_s[None, None].expand(b, -1, -1), x, u_accept, u_token)
    first = torch.where(n >= 1, x[:, 0], token)
    assert chi_square_p_value(torch.bincount(first, minlength=p_s.numel()).double(), p_s) > 1e-3
    wrong = torch.where(n >= 1, x[:, 0], torch.multinomial(p_s, b, replacement=True, generator=g))
    assert chi_square_p_value(torch.bincount(wrong, minlength=p_s.numel()).double(), p_s) < 1e-6


def test_greedy_speculative_equals_transformers_assisted_generation(pair):
    transformers = pytest.importorskip("transformers")
    target, draft, tok = pair
    hf_target = transformers.AutoModelForCausalLM.from_pretrained(ASSETS_DIR / "tinyworld-main",
                                                                   torch_dtype=torch.float32).eval()
    hf_draft = transformers.AutoModelForCausalLM.from_pretrained(ASSETS_DIR / "tinyworld-draft",
                                                                  torch_dtype=torch.float32).eval()
    for prompt in PROMPTS[:3]:
        ids = tok.encode(prompt, add_bos=True)
        with torch.no_grad():
            theirs = hf_target.generate(torch.tensor([ids]), assistant_model=hf_draft, do_sample=False,
                                        max_new_tokens=30, eos_token_id=tok.eos_token_id,
                                        pad_token_id=tok.eos_token_id)[0, len(ids):].tolist()
        ours = speculative_generate(target, draft, ids, gamma=4, max_new_tokens=30, temperature=0,
                                    eos_token_ids=tok.eos_token_id)
        assert ours.tokens == theirs, prompt


def test_bad_input_is_refused(pair):
    target, draft, tok = pair
    ids = tok.encode("Once", add_bos=True)
    with pytest.raises(ValueError, match="gamma"):
        speculative_generate(target, draft, ids, gamma=0)
    with pytest.raises(ValueError, match="prompt_ids"):
        speculative_generate(target, draft, [])
    with pytest.raises(ValueError, match="temperature"):
        speculative_generate(target, draft, ids, temperature=-1)
    real, _ = load("smollm2-135m-instruct")
    with pytest.raises(ValueError, match="vocabulary"):
        speculative_generate(target, real, ids)
    # Same vocabulary size, another tokenizer (its special tokens elsewhere): refused.
    other = copy.deepcopy(draft)
    other.config = dataclasses.replace(draft.config, eos_token_id=draft.config.eos_token_id + 1)
    with pytest.raises(ValueError, match="share a tokenizer.*eos_token_id"):
        speculative_generate(target, other, ids)
    with pytest.raises(ValueError, match="draft must be"):
        speculative_generate(target, "tinyworld-draft", ids)


def test_verify_with_a_one_hot_draft_is_exact():
    """A deterministic proposal (prompt lookup) is a one-hot q: accept x with probability p(x),
    otherwise draw from p without x."""
    b, v = 200_000, 6
    g = torch.Generator().manual_seed(2)
    p = torch.distributions.Dirichlet(torch.full((v,), 0.7)).sample((2,))
    q = torch.zeros(1, v)
    q[0, 3] = 1.0
    n, token = verify(p.expand(b, -1, -1), q.expand(b, -1, -1)[:, None, :].reshape(b, 1, v),
                      torch.full((b, 1), 3), torch.rand(b, 1, generator=g), torch.rand(b, generator=g))
    first = torch.where(n >= 1, torch.full_like(n, 3), token)
    assert chi_square_p_value(torch.bincount(first, minlength=v).double(), p[0].double()) > 1e-3


def test_early_exit_draft_shares_the_weights_and_keeps_greedy_output(pair):
    target, _, tok = pair
    draft = early_exit_draft(target, 2)
    assert draft.config.num_hidden_layers == 2 and draft.lm_head is target.lm_head
    assert draft.model.layers[1] is target.model.layers[1]
    for prompt in PROMPTS[:3]:
        ids = tok.encode(prompt, add_bos=True)
        ours = speculative_generate(target, draft, ids, gamma=3, max_new_tokens=30, temperature=0,
                                    eos_token_ids=tok.eos_token_id)
        plain = generate_ids(target, [ids], max_new_tokens=30, temperature=0, eos_token_ids=tok.eos_token_id)
        assert ours.tokens == plain.tokens[0], prompt
    with pytest.raises(ValueError, match="layers"):
        early_exit_draft(target, target.config.num_hidden_layers)


def test_prompt_lookup_proposes_what_followed_the_last_ngram_and_keeps_greedy_output(pair):
    lookup = PromptLookupDraft(max_ngram=2)
    assert lookup.propose([5, 6, 7, 8, 1, 5, 6], 3) == [7, 8, 1]  # after the bigram (5, 6)
    assert lookup.propose([1, 2, 3], 2) == []  # nothing recurs: an ordinary decoding step
    # transformers' choice: the earliest occurrence
    assert PromptLookupDraft(max_ngram=2, latest=False).propose([5, 6, 9, 5, 6, 7, 5, 6], 2) == [9, 5]
    assert PromptLookupDraft(max_ngram=2).propose([5, 6, 9, 5, 6, 7, 5, 6], 2) == [7, 5]
    target, _, tok = pair
    text = "Question: Where does Mira live?\nAnswer: Mira lives in Tolby.\nQuestion: Where does Mira live?\nAnswer:"
    ids = tok.encode(text, add_bos=True)
    ours = speculative_generate(target, PromptLookupDraft(), ids, gamma=4, max_new_tokens=30, temperature=0,
                                eos_token_ids=tok.eos_token_id)
    plain = generate_ids(target, [ids], max_new_tokens=30, temperature=0, eos_token_ids=tok.eos_token_id)
    assert ours.tokens == plain.tokens[0]
    assert ours.draft_calls == 0 and sum(ours.proposed) > 0
    with pytest.raises(ValueError, match="min_ngram"):
        PromptLookupDraft(max_ngram=1, min_ngram=2)


@pytest.mark.parametrize("gamma", [1, 3, 6])
def test_tokens_per_round_match_the_formula_in_simulation(gamma):
    """Rounds of verify() in which each draft token is accepted independently with probability
    alpha emit (1 - alpha^(gamma+1)) / (1 - alpha) tokens on average (one of them the target's)."""
    alpha, b, v = 0.7, 100_000, 4
    g = torch.Generator().manual_seed(gamma)
    p = torch.full((b, gamma + 1, v), 1 / v)
    q = torch.full((b, gamma, v), 1 / v)
    draft = torch.zeros(b, gamma, dtype=torch.long)
    # u * q(x) < p(x) with p = q: accepted iff u < 1; scale the uniforms so P(u < 1) = alpha.
    u_accept = torch.rand(b, gamma, generator=g) / alpha
    n, _ = verify(p, q, draft, u_accept, torch.rand(b, generator=g))
    emitted = (n + 1).double().mean()
    assert abs(emitted - expected_tokens_per_round(alpha, gamma)) < 0.02
    # SpeculativeResult.alpha recovers alpha from the rounds; accepted / proposed does not.
    rounds = SpeculativeResult(prompt_ids=[0], tokens=[], gamma=gamma, accepted=n.tolist(),
                               proposed=[gamma] * b)
    assert abs(rounds.alpha - alpha) < 0.01
    expected_rate = sum(alpha ** i for i in range(1, gamma + 1)) / gamma  # E[n] / gamma
    assert abs(rounds.acceptance_rate - expected_rate) < 0.01
    assert expected_tokens_per_round(1.0, gamma) == gamma + 1 and expected_tokens_per_round(0.0, gamma) == 1


def test_expected_speedup():
    assert expected_speedup(0.0, 4, 0.0) == 1.0  # a free draft that is never right costs nothing
    assert expected_speedup(0.8, 4, 0.05) == pytest.approx((1 - 0.8**5) / 0.2 / 1.2)
    assert expected_speedup(0.5, 4, 0.5) < 1  # a slow, poor draft loses
    with pytest.raises(ValueError, match="alpha"):
        expected_speedup(1.5, 4, 0.1)
    with pytest.raises(ValueError, match="cost_ratio"):
        expected_speedup(0.5, 4, -1)
