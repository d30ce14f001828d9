"""llmbook.world.truth: true next-token distributions lined up with a model's logits."""

import math

import pytest
import torch

from llmbook.hub import load
from llmbook.world import default_splits, sample_documents
from llmbook.world.truth import (
    document_logits,
    kl_from_truth,
    mean_kl_by_temperature,
    position_logits,
    true_support,
    truth_positions,
)


@pytest.fixture(scope="module")
def setup():
    model, tok = load("tinyworld-draft", device="cpu")
    splits = default_splits(0)
    docs = sample_documents("fact", splits.train_kb, 5, 3) + sample_documents("arithmetic", splits.train_kb, 5, 2)
    return model, tok, splits, docs, truth_positions(docs, tok, splits.train_kb)


def test_every_position_is_covered_and_the_actual_next_token_is_possible(setup):
    _, tok, _, docs, positions = setup
    assert len(positions) == sum(len(tok.encode(d.text)) + 1 for d in docs)
    for p in positions:
        ids = tok.encode(docs[p.doc].text)
        actual = ids[p.position] if p.position < len(ids) else tok.eos_token_id
        assert p.truth.get(actual, 0) > 0, (p.prefix, actual)
        assert sum(p.truth.values()) == pytest.approx(1.0)
    # Digits of a sum are certain once the problem is written; the first number is a free choice.
    assert any(p.entropy == 0 for p in positions) and any(p.entropy > 1 for p in positions)


def test_logits_line_up_with_positions_and_kl_is_zero_only_at_the_truth(setup):
    model, tok, _, docs, positions = setup
    logits = document_logits(model, tok, docs)
    assert [len(row) for row in logits] == [len(tok.encode(d.text)) + 1 for d in docs]
    p = next(p for p in positions if p.entropy > 1)
    exact = torch.full((tok.vocab_size,), -math.inf)
    for token, prob in p.truth.items():
        exact[token] = math.log(prob)
    assert kl_from_truth(p.truth, exact, 1.0) == pytest.approx(0.0, abs=1e-6)
    assert kl_from_truth(p.truth, exact, 2.0) > 0.01  # same ranking, wrong spread
    assert kl_from_truth(p.truth, logits[p.doc][p.position], 1.0) > 0
    curve = mean_kl_by_temperature(positions, logits, [0.5, 1.0, 4.0])
    assert all(k > 0 for k in curve) and curve[2] > curve[1]
    with pytest.raises(ValueError, match="positions"):
        mean_kl_by_temperature([], logits, [1.0])


def test_position_logits_and_true_support(setup):
    model, tok, _, docs, positions = setup
    logits = document_logits(model, tok, docs)
    stacked = position_logits(positions, logits)
    assert stacked.shape == (len(positions), tok.vocab_size)
    assert torch.equal(stacked[5], logits[positions[5].doc][positions[5].position])
    support = true_support(positions, tok.vocab_size)
    assert support.sum(-1).tolist() == [len(p.truth) for p in positions]
    for i in (0, len(positions) - 1):
        assert set(torch.nonzero(support[i]).flatten().tolist()) == set(positions[i].truth)
    with pytest.raises(ValueError, match="positions"):
        position_logits([], logits)
    with pytest.raises(ValueError, match="document_logits"):
        position_logits(positions, logits[:1])
    with pytest.raises(ValueError, match="vocab_size"):
        true_support(positions, 0)
    with pytest.raises(ValueError, match="vocab_size"):
        true_support(positions, 3)
