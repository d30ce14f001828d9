"""llmbook.world.truth: true next-token distributions lined up with a model's logits."""

import math

import pytest
import torch

from llmbook.hub import load
from llmbook.world import default_splits, sample_documents
from llmbook.world.truth import (
    TruthPosition,
    document_logits,
    document_mean_with_se,
    kl_by_temperature,
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


def test_kl_by_temperature_matches_the_position_by_position_kl(setup):
    model, tok, _, docs, positions = setup
    logits = document_logits(model, tok, docs)
    grid = [0.0, 0.5, 1.0, 2.5]
    table = kl_by_temperature(positions, logits, grid)
    assert table.shape == (len(positions), len(grid))
    for j, t in enumerate(grid):
        expected = [kl_from_truth(p.truth, logits[p.doc][p.position], t) for p in positions]
        for got, want in zip(table[:, j].tolist(), expected):
            # float64 here, float32 in kl_from_truth
            assert got == want or got == pytest.approx(want, rel=1e-3, abs=1e-5)
    assert table[:, 2].mean().item() == pytest.approx(mean_kl_by_temperature(positions, logits, [1.0])[0], rel=1e-4)
    with pytest.raises(ValueError, match="positions"):
        kl_by_temperature([], logits, [1.0])
    with pytest.raises(ValueError, match="temperatures"):
        kl_by_temperature(positions, logits, [])


def test_document_mean_with_se_counts_documents_not_positions():
    pos = [TruthPosition(d, i, "", {0: 1.0}) for d, n in ((0, 3), (1, 1), (2, 2)) for i in range(n)]
    values = [1.0, 1.0, 1.0, 4.0, 2.0, 2.0]
    mean, se = document_mean_with_se(values, pos)
    assert mean == pytest.approx(11 / 6)
    # cluster sums 3, 4, 4 against mean * size 5.5, 1.833, 3.667
    residuals = (3 - 5.5) ** 2 + (4 - 11 / 6) ** 2 + (4 - 11 / 3) ** 2
    assert se == pytest.approx(math.sqrt(residuals * 3 / 2) / 6)
    assert math.isnan(document_mean_with_se([1.0, 2.0], pos[:2])[1])  # one document
    with pytest.raises(ValueError):
        document_mean_with_se([1.0], pos)
    with pytest.raises(ValueError):
        document_mean_with_se([math.inf] * 6, pos)


def test_positions_before_the_family_is_decided_are_marked():
    from llmbook.hub import load
    from llmbook.world import default_splits, sample_documents
    from llmbook.world.truth import truth_positions

    _, tokenizer = load("tinyworld-main")
    kb = default_splits().train_kb
    docs = sample_documents("qa", kb, 5, 1) + sample_documents("card", kb, 5, 1)
    positions = truth_positions(docs, tokenizer, kb)
    for d in range(2):
        flags = [p.family_known for p in positions if p.doc == d]
        # The document's start could open any family; once decided, the family stays decided.
        assert flags[0] is False and flags[-1] is True
        assert flags == sorted(flags)
    # A QA pair opens like a ReAct trace ("Question: ..."): undecided for more than one token.
    assert sum(not p.family_known for p in positions if p.doc == 0) > 1
