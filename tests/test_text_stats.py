"""llmbook.text_stats: repetition, surprisal and pooled rates of generated text."""

import math

import pytest

from llmbook.text_stats import distinct_ngrams, nats_per_token, rate_with_se, repeated_ngram_share


def test_distinct_ngrams_pools_texts_without_crossing_them():
    assert distinct_ngrams([["a", "b", "c"]], n=2) == 1.0
    # "a b" occurs in both texts; "b a" would only exist across the boundary and must not be counted
    assert distinct_ngrams([["a", "b"], ["a", "b"]], n=2) == pytest.approx(1 / 2)
    assert distinct_ngrams([[1, 1, 1, 1]], n=1) == pytest.approx(1 / 4)
    assert math.isnan(distinct_ngrams([[1], []], n=2))


@pytest.mark.parametrize("texts, match", [("abc", "texts must"), (["ab"], r"texts\[0\]"), ([[1]], None)])
def test_distinct_ngrams_bad_input(texts, match):
    if match is None:
        with pytest.raises(ValueError, match="n must"):
            distinct_ngrams(texts, n=0)
    else:
        with pytest.raises(ValueError, match=match):
            distinct_ngrams(texts, n=2)


def test_repeated_ngrams_of_a_loop_and_of_fresh_text():
    assert repeated_ngram_share(list(range(20)), n=4) == 0.0
    loop = [1, 2, 3] * 10  # a cycle of length 3: every 4-gram after the first 3 is a repeat
    grams = len(loop) - 3
    assert repeated_ngram_share(loop, n=4) == pytest.approx((grams - 3) / grams)
    assert repeated_ngram_share("a b a b".split(), n=2) == pytest.approx(1 / 3)
    assert math.isnan(repeated_ngram_share([1, 2], n=4))


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_repeated_ngrams_bad_n(bad):
    with pytest.raises(ValueError, match="n must"):
        repeated_ngram_share([1, 2, 3], n=bad)


def test_repeated_ngrams_rejects_a_string():
    with pytest.raises(ValueError, match="tokens"):
        repeated_ngram_share("abcabc", n=2)


def test_nats_per_token():
    assert nats_per_token([[1.0, 1.0], [1.0]]) == 0.0
    assert nats_per_token([[0.5], [0.25, 0.5]]) == pytest.approx((3 * math.log(2) + math.log(2)) / 3)
    with pytest.raises(ValueError, match="no tokens"):
        nats_per_token([[], []])
    with pytest.raises(ValueError, match="probabilities"):
        nats_per_token([[0.0]])


def test_rate_with_se_pools_and_clusters():
    rate, se = rate_with_se([1, 1, 1, 1], [2, 2, 2, 2])
    assert rate == 0.5 and se == 0.0  # every text has the same rate: no spread between texts
    rate, se = rate_with_se([2, 0], [2, 2])
    assert rate == 0.5 and se == pytest.approx(math.sqrt((1 + 1) * 2) / 4)
    assert rate_with_se([0, 3], [0, 4])[0] == 0.75
    assert all(math.isnan(x) for x in rate_with_se([0], [0]))
    assert math.isnan(rate_with_se([1], [2])[1])


def test_rate_with_se_bad_input():
    with pytest.raises(ValueError, match="same length"):
        rate_with_se([1], [1, 2])
    with pytest.raises(ValueError, match="hits\\[i\\]"):
        rate_with_se([3], [2])
    with pytest.raises(ValueError, match="totals"):
        rate_with_se([0], [-1])


def test_repeated_ngram_count_agrees_with_the_share():
    from llmbook.text_stats import repeated_ngram_count, repeated_ngram_share

    loop = [1, 2, 3] * 4
    assert repeated_ngram_count(loop, 4) == (6, 9)
    assert repeated_ngram_share(loop, 4) == 6 / 9
    assert repeated_ngram_count([1, 2], 4) == (0, 0)


def test_mean_with_se_matches_rate_with_se_for_equal_totals_and_allows_negatives():
    from llmbook.text_stats import mean_with_se, rate_with_se

    hits, k = [4, 0, 2, 3, 1], 4
    mean, se = mean_with_se([h / k for h in hits])
    rate, rate_se = rate_with_se(hits, [k] * len(hits))
    assert mean == pytest.approx(rate) and se == pytest.approx(rate_se)
    assert mean_with_se([1.0, -1.0])[0] == 0.0
    assert math.isnan(mean_with_se([0.5])[1])
    with pytest.raises(ValueError, match="values"):
        mean_with_se([])


def test_zero_count_upper_bound_is_exact_and_near_the_rule_of_three():
    from llmbook.text_stats import zero_count_upper_bound

    bound = zero_count_upper_bound(251)
    assert (1 - bound) ** 251 == pytest.approx(0.05)
    assert bound == pytest.approx(3 / 251, rel=0.01)
    with pytest.raises(ValueError, match="n must be"):
        zero_count_upper_bound(0)
    with pytest.raises(ValueError, match="confidence"):
        zero_count_upper_bound(10, 1.0)


def test_ratio_with_se_equals_rate_with_se_on_counts_and_takes_real_values():
    from llmbook.text_stats import ratio_with_se

    hits, totals = [1, 0, 3, 2], [4, 2, 5, 3]
    assert ratio_with_se(hits, totals) == pytest.approx(rate_with_se(hits, totals))
    mean, se = ratio_with_se([0.5, -0.25, 1.5], [2, 1, 3])
    assert mean == pytest.approx(1.75 / 6)
    assert se > 0
    assert all(math.isnan(x) for x in ratio_with_se([0.0], [0]))
    assert math.isnan(ratio_with_se([0.3], [2])[1])
    with pytest.raises(ValueError):
        ratio_with_se([1.0], [1, 2])
    with pytest.raises(ValueError):
        ratio_with_se([math.nan], [1])
    with pytest.raises(ValueError):
        ratio_with_se([1.0], [-1])


def test_chi_square_against_scipy_free_cases():
    from llmbook.text_stats import chi_square

    # Observed equal to expected: statistic 0, p-value 1.
    stat, df, p = chi_square([25, 25, 50], [0.25, 0.25, 0.5])
    assert (stat, df) == (0.0, 2) and abs(p - 1) < 1e-12
    # 2 bins, df 1: statistic (60-50)^2/50 * 2 = 4, p = P(chi2_1 > 4) = erfc(sqrt(2)) = 0.0455
    stat, df, p = chi_square([60, 40], [0.5, 0.5])
    assert (stat, df) == (4.0, 1) and abs(p - math.erfc(math.sqrt(2))) < 1e-12
    # Bins expected below 5 are pooled: 3 rare bins of expected 2 each pool into one of 6.
    stat, df, _ = chi_square([94, 2, 2, 2], [0.94, 0.02, 0.02, 0.02])
    assert (stat, df) == (0.0, 1)
    with pytest.raises(ValueError, match="same length"):
        chi_square([1, 2], [1.0])
    with pytest.raises(ValueError, match="fewer than 2 bins"):
        chi_square([3, 1], [0.9, 0.1])
