"""Bit-exact parity of llmbook.sampling with transformers' logits warpers.

Parity means: the same entries are -inf (the same kept token sets) and the finite
entries are identical, so the softmax (the distribution sampled from) is identical too.
"""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

transformers_lp = pytest.importorskip("transformers.generation.logits_process")
from transformers.generation.logits_process import (  # noqa: E402
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from llmbook.sampling import (  # noqa: E402
    MinP,
    Temperature,
    TopK,
    TopP,
    apply_processors,
    build_processors,
    nucleus_size,
    probabilities,
    sample,
)

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NEG_INF = float("-inf")


@st.composite
def logits_batches(draw) -> torch.Tensor:
    """Float32 logits (batch, vocab) mixing the hard cases: ties, -inf, extremes, near-ties."""
    batch = draw(st.integers(1, 4))
    vocab = draw(st.integers(1, 40))
    kind = draw(st.sampled_from(["normal", "ties", "extreme", "near_ties", "mixed"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "normal":
        x = rng.normal(0.0, draw(st.sampled_from([0.1, 1.0, 5.0, 30.0])), (batch, vocab))
    elif kind == "ties":
        # Few distinct values: ties everywhere, including at every filter's boundary.
        x = rng.choice(np.array([-2.0, 0.0, 0.5, 1.0, 3.0])[: draw(st.integers(1, 5))], (batch, vocab))
    elif kind == "extreme":
        x = rng.choice(np.array([-1e4, -1.0, 0.0, 1.0, 1e4]), (batch, vocab))
    elif kind == "near_ties":
        x = 7.0 + rng.integers(-3, 4, (batch, vocab)) * 1e-6
    else:
        x = np.concatenate([rng.normal(0, 3, (batch, vocab)), rng.choice([0.0, 1.0], (batch, vocab))], -1)
    x = torch.tensor(x, dtype=torch.float32)
    if draw(st.booleans()):
        # Some -inf entries (as an earlier filter or a banned token would leave), never a whole row.
        holes = torch.tensor(rng.random(x.shape) < 0.3)
        holes[:, int(rng.integers(x.shape[-1]))] = False
        x = x.masked_fill(holes, NEG_INF)
    return x


temperatures = st.sampled_from([0.05, 0.3, 0.7, 1.0, 1.3, 2.0, 10.0])
top_ps = st.one_of(st.sampled_from([0.1, 0.25, 0.5, 0.8, 0.9, 0.95, 0.99, 1.0]), st.floats(0.01, 1.0))
min_ps = st.one_of(st.sampled_from([0.0, 0.05, 0.1, 0.5, 1.0]), st.floats(0.0, 1.0))
keeps = st.integers(1, 5)


def hf(warper, scores: torch.Tensor) -> torch.Tensor:
    return warper(torch.zeros(scores.shape[0], 1, dtype=torch.long), scores)


def assert_identical(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert torch.equal(ours == NEG_INF, theirs == NEG_INF), "kept token sets differ"
    assert torch.equal(ours, theirs), "kept logits differ"
    assert torch.equal(ours.softmax(-1), theirs.softmax(-1))


@SETTINGS
@given(logits_batches(), temperatures)
def test_temperature_matches_transformers(logits, temperature):
    assert_identical(Temperature(temperature)(logits), hf(TemperatureLogitsWarper(temperature), logits))


@SETTINGS
@given(logits_batches(), st.integers(1, 50), keeps)
def test_top_k_matches_transformers(logits, top_k, keep):
    ours = TopK(top_k, min_tokens_to_keep=keep)(logits)
    assert_identical(ours, hf(TopKLogitsWarper(top_k, min_tokens_to_keep=keep), logits))


@SETTINGS
@given(logits_batches(), top_ps, keeps)
def test_top_p_matches_transformers(logits, top_p, keep):
    ours = TopP(top_p, min_tokens_to_keep=keep)(logits)
    assert_identical(ours, hf(TopPLogitsWarper(top_p, min_tokens_to_keep=keep), logits))


@SETTINGS
@given(logits_batches(), min_ps, keeps)
def test_min_p_matches_transformers(logits, min_p, keep):
    ours = MinP(min_p, min_tokens_to_keep=keep)(logits)
    assert_identical(ours, hf(MinPLogitsWarper(min_p, min_tokens_to_keep=keep), logits))


def transformers_chain(logits, temperature, top_k, top_p, min_p):
    """What transformers' generate() builds for these settings (its _get_logits_processor rules)."""
    scores = logits
    if temperature != 1.0:
        scores = hf(TemperatureLogitsWarper(temperature), scores)
    if top_k is not None:
        scores = hf(TopKLogitsWarper(top_k), scores)
    if top_p is not None and top_p < 1.0:
        scores = hf(TopPLogitsWarper(top_p), scores)
    if min_p is not None:
        scores = hf(MinPLogitsWarper(min_p), scores)
    return scores


chain_settings = st.tuples(
    temperatures, st.one_of(st.none(), st.integers(1, 50)), st.one_of(st.none(), top_ps), st.one_of(st.none(), min_ps)
)


@SETTINGS
@given(logits_batches(), chain_settings)
def test_chains_and_probabilities_match_transformers(logits, chain):
    temperature, top_k, top_p, min_p = chain
    theirs = transformers_chain(logits, *chain)
    ours = apply_processors(logits, build_processors(temperature, top_k, top_p, min_p))
    assert_identical(ours, theirs)
    # The fused path behind probabilities()/sample() must give the very same distribution.
    probs = probabilities(logits, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    assert torch.equal(probs, theirs.softmax(-1))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    "chain",
    [(0.7, None, 0.9, None), (1.0, 50, None, None), (0.8, None, None, 0.05), (0.8, 200, 0.95, 0.02), (1.5, 64, 0.5, None)],
)
def test_fused_path_matches_transformers_on_a_128k_vocabulary(seed, chain):
    # At full size the fused path takes its shortcuts (numpy value sort, top-k values reused).
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 131072, generator=g) * 2.5
    logits[1, :50] = 12.0  # a block of tied leading tokens
    theirs = transformers_chain(logits, *chain).softmax(-1)
    ours = probabilities(logits, temperature=chain[0], top_k=chain[1], top_p=chain[2], min_p=chain[3])
    assert torch.equal(ours, theirs)


def test_top_p_ties_straddling_the_cut_follow_transformers():
    # Ten equal logits and top_p = 0.55: the cut falls inside the tie, so which tied tokens
    # survive is decided by torch.sort's order of equal values. The fused path must defer to it.
    logits = torch.zeros(2, 10)
    logits[1, 3] = -1.0
    theirs = hf(TopPLogitsWarper(0.55), logits)
    kept = (theirs > NEG_INF).sum(-1)
    assert 0 < kept[0] < 10  # the tie really is split
    assert_identical(TopP(0.55)(logits), theirs)
    assert torch.equal(probabilities(logits, top_p=0.55), theirs.softmax(-1))


def test_top_k_keeps_every_token_tied_with_the_kth():
    logits = torch.tensor([[3.0, 1.0, 1.0, 1.0, 0.0]])
    assert (TopK(2)(logits) > NEG_INF).tolist() == [[True, True, True, True, False]]


def test_top_p_uses_less_or_equal_threshold():
    # probs 0.5, 0.25, 0.25: the two small ones sum to exactly 1 - 0.5, so with top_p = 0.5
    # they are removed (<=): the nucleus is the single token that has exactly top_p mass.
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    assert nucleus_size(logits, 0.5).tolist() == [1]
    assert torch.equal(TopP(0.5)(logits), hf(TopPLogitsWarper(0.5), logits))


def test_nucleus_size_counts_the_kept_tokens():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.05, 0.05], [0.25, 0.25, 0.25, 0.25]]))
    assert nucleus_size(logits, 0.85).tolist() == [2, 4]
    assert nucleus_size(logits, 0.85, temperature=0.0).tolist() == [1, 1]
    # Colder sharpens: at T = 0.1 the 0.6 token alone carries > 0.85 of the mass.
    assert nucleus_size(logits, 0.85, temperature=0.1).tolist() == [1, 4]
    assert nucleus_size(logits[0], 0.85).shape == ()


def test_processors_do_not_modify_their_input():
    logits = torch.randn(2, 30, generator=torch.Generator().manual_seed(0))
    before = logits.clone()
    for p in [Temperature(0.5), Temperature(0.0), TopK(3), TopP(0.5), MinP(0.2)]:
        p(logits)
    probabilities(logits, temperature=0.5, top_k=3, top_p=0.5, min_p=0.2)
    sample(logits, temperature=0.5, top_k=3, top_p=0.5, min_p=0.2)
    assert torch.equal(logits, before)


def test_processors_batch_over_leading_dimensions():
    logits = torch.randn(2, 3, 25, generator=torch.Generator().manual_seed(1))
    for p in [Temperature(0.5), TopK(4), TopP(0.7), MinP(0.1)]:
        assert torch.equal(p(logits), p(logits.reshape(6, 25)).reshape(2, 3, 25))
    probs = probabilities(logits, top_k=4, top_p=0.7)
    assert probs.shape == (2, 3, 25)
    assert torch.equal(probs.reshape(6, 25), probabilities(logits.reshape(6, 25), top_k=4, top_p=0.7))
    assert sample(logits, top_k=4).shape == (2, 3)


def test_tiny_top_p_keeps_the_top_token():
    # 1 - 1e-9 rounds to 1.0 in float32, so every cumulative probability passes the cut;
    # min_tokens_to_keep is what leaves the most likely token in.
    logits = torch.randn(2, 1000, generator=torch.Generator().manual_seed(3))
    theirs = hf(TopPLogitsWarper(1e-9), logits)
    assert torch.equal((theirs > NEG_INF).sum(-1), torch.tensor([1, 1]))
    assert torch.equal(probabilities(logits, top_p=1e-9), theirs.softmax(-1))
