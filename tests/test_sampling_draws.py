"""sample() and draw(): greedy at T = 0, seeded reproducibility, frequencies that match
probabilities(), inverse-CDF draws that do not depend on the rest of the batch, per-row seeds,
argument validation, and the CUDA path."""

import math

import pytest
import torch

from llmbook.sampling import (
    MinP,
    Temperature,
    TopK,
    TopP,
    apply_processors,
    build_processors,
    draw,
    nucleus_size,
    probabilities,
    row_generators,
    row_seeds,
    sample,
)
from llmbook.sampling import _draw


def chi_square_critical(df: int, z: float = 3.719) -> float:
    """Upper quantile of chi^2(df) at p = 1e-4 (Wilson-Hilferty; z is the normal quantile)."""
    h = 2.0 / (9.0 * df)
    return df * (1.0 - h + z * math.sqrt(h)) ** 3


@pytest.mark.parametrize(
    "settings",
    [
        dict(temperature=1.0),  # draw over the whole vocabulary
        dict(temperature=0.7, top_k=6),  # draw over top-k's candidates
        dict(temperature=1.3, min_p=0.2),  # few survivors: draw over a compacted set
        dict(temperature=0.9, top_k=40, top_p=0.8, min_p=0.05),
    ],
)
def test_sample_frequencies_match_probabilities(settings):
    vocab, draws = 200, 40_000
    logits = torch.randn(vocab, generator=torch.Generator().manual_seed(11)) * 1.5
    probs = probabilities(logits, **settings)
    tokens = sample(logits.expand(draws, vocab), **settings, generator=torch.Generator().manual_seed(5))
    counts = torch.bincount(tokens, minlength=vocab).double()
    assert counts[probs == 0].sum() == 0, "drew a filtered-out token"
    # Pool the rare tokens so each cell expects >= 5 draws, then a chi-square goodness of fit.
    expected = probs.double() * draws
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big & (probs > 0)].sum().reshape(1)])
    exp = torch.cat([expected[big], expected[~big & (probs > 0)].sum().reshape(1)])
    if exp[-1] < 5:
        obs, exp = obs[:-1], exp[:-1]
        assert counts[~big & (probs > 0)].sum() <= 20
    stat = ((obs - exp) ** 2 / exp).sum().item()
    df = obs.numel() - 1
    assert df >= 3
    assert stat < chi_square_critical(df), f"chi2 = {stat:.1f} with {df} degrees of freedom"


def test_chi_square_bound_rejects_a_wrong_distribution():
    # The statistic above has power: draws from T = 1 fail against the T = 0.7 distribution.
    vocab, draws = 200, 40_000
    logits = torch.randn(vocab, generator=torch.Generator().manual_seed(11)) * 1.5
    probs = probabilities(logits, temperature=0.7, top_k=6)
    tokens = sample(logits.expand(draws, vocab), top_k=6, generator=torch.Generator().manual_seed(5))
    counts = torch.bincount(tokens, minlength=vocab).double()
    keep = probs > 0
    stat = ((counts[keep] - probs[keep] * draws) ** 2 / (probs[keep] * draws)).sum().item()
    assert stat > chi_square_critical(int(keep.sum()) - 1)


def test_seeded_sampling_reproduces():
    logits = torch.randn(16, 5000, generator=torch.Generator().manual_seed(0))
    for settings in [dict(), dict(top_k=50), dict(top_p=0.9, temperature=0.8), dict(min_p=0.1)]:
        a = sample(logits, **settings, generator=torch.Generator().manual_seed(42))
        b = sample(logits, **settings, generator=torch.Generator().manual_seed(42))
        c = sample(logits, **settings, generator=torch.Generator().manual_seed(43))
        assert torch.equal(a, b)
        assert not torch.equal(a, c)
        assert a.dtype == torch.long and a.shape == (16,)


def inverse_cdf(probs: torch.Tensor, u: float) -> int:
    """The definition sample() implements, written out for one row: the first token (in
    vocabulary order) whose cumulative probability exceeds u times the total."""
    cdf = probs.double().cumsum(-1)
    return int(torch.searchsorted(cdf, torch.tensor([u * cdf[-1].item()], dtype=torch.float64), right=True))


@pytest.mark.parametrize("settings", [dict(), dict(temperature=0.7, top_k=40), dict(top_p=0.9), dict(min_p=0.05, temperature=1.3)])
def test_sample_is_the_inverse_cdf_of_probabilities(settings):
    logits = torch.randn(3, 5000, generator=torch.Generator().manual_seed(2)) * 3
    probs = probabilities(logits, **settings)
    # A list of generators: row i takes the next uniform of generator i.
    tokens = sample(logits, **settings, generator=row_generators([10, 11, 12], 3))
    for i, seed in enumerate([10, 11, 12]):
        u = torch.rand(1, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)).item()
        assert tokens[i].item() == inverse_cdf(probs[i], u)
    # One generator: the rows take its next numbers in row order.
    tokens = sample(logits, **settings, generator=torch.Generator().manual_seed(4))
    u = torch.rand(3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    assert tokens.tolist() == [inverse_cdf(probs[i], u[i].item()) for i in range(3)]
    assert torch.equal(draw(probs, generator=torch.Generator().manual_seed(4)), tokens)


@pytest.mark.parametrize("settings", [dict(), dict(top_p=0.9), dict(top_k=20), dict(min_p=0.1), dict(temperature=0.8, top_k=50, top_p=0.95, min_p=0.02)])
def test_a_rows_draw_does_not_depend_on_the_other_rows(settings):
    # Row 0 is peaked (a small nucleus), the others flat (a nucleus of thousands of tokens):
    # the old sampler chose its code path for the whole batch from the largest nucleus, so row
    # 0 drew differently alone and in this batch from the same generator state.
    vocab = 8000
    peaked = torch.randn(vocab, generator=torch.Generator().manual_seed(0)) * 4
    flat = torch.randn(4, vocab, generator=torch.Generator().manual_seed(1)) * 0.1
    for seed in range(60):
        alone = sample(peaked, **settings, generator=row_generators([seed], 1))
        batch = sample(torch.cat([peaked[None], flat]), **settings, generator=row_generators(seed, 5))
        assert batch[0].item() == alone.item(), f"seed {seed}"
        # Any row, given its own seed, draws what it draws in the batch.
        seeds = row_seeds(seed, 5)
        assert sample(flat[2], **settings, generator=row_generators([seeds[3]], 1)).item() == batch[3].item()


def test_draw_never_lands_on_a_zero_probability_token():
    # u * total can round up to total; the draw must still end on a token with probability > 0.
    probs = torch.tensor([[0.25, 0.75, 0.0, 0.0], [0.0, 0.5, 0.0, 0.5]], dtype=torch.float64)
    top = torch.nextafter(torch.tensor(1.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64))
    assert _draw(probs, torch.stack([top, top])).tolist() == [1, 3]
    assert _draw(probs, torch.tensor([1.0, 1.0], dtype=torch.float64)).tolist() == [1, 3]  # even u = 1
    assert _draw(probs, torch.zeros(2, dtype=torch.float64)).tolist() == [0, 1]
    assert _draw(probs, torch.tensor([0.25, 0.5], dtype=torch.float64)).tolist() == [1, 3]  # at a boundary: the next token


def test_row_seeds():
    seeds = row_seeds(123, 64)
    assert seeds[0] == 123 and len(set(seeds)) == 64
    assert row_seeds(123, 5) == seeds[:5]  # a row's seed does not depend on the batch size
    assert all(0 <= s < 2**32 for s in seeds[1:])  # torch's CPU generator reads 32 bits of a seed
    # Runs seeded 0 and 1 (or batches seeded seed + b) share no row seed, unlike seed + row would.
    assert not set(row_seeds(0, 64)) & set(row_seeds(1, 64))
    assert row_seeds(2**64 - 1, 2)[0] == 2**64 - 1 and row_seeds(7, 0) == []


def test_identical_rows_with_one_int_seed_draw_differently():
    logits = torch.randn(1000, generator=torch.Generator().manual_seed(0)).expand(64, 1000)
    tokens = sample(logits, generator=row_generators(5, 64))
    assert len(set(tokens.tolist())) > 20
    assert torch.equal(tokens, sample(logits, generator=row_generators(5, 64)))


def test_temperature_zero_is_greedy_with_first_index_on_ties():
    logits = torch.tensor([[1.0, 5.0, 5.0, 2.0], [7.0, 0.0, 7.0, 7.0]])
    assert sample(logits, temperature=0.0).tolist() == [1, 0]
    assert probabilities(logits, temperature=0.0, top_p=0.5).tolist() == [[0, 1, 0, 0], [1, 0, 0, 0]]
    only = Temperature(0.0)(logits)
    assert (only > float("-inf")).tolist() == [[False, True, False, False], [True, False, False, False]]
    assert sample(logits[0], temperature=0.0).shape == ()


def test_build_processors_order_and_no_ops():
    assert build_processors() == []
    assert build_processors(top_p=1.0) == []
    chain = build_processors(temperature=0.5, top_k=10, top_p=0.9, min_p=0.1)
    assert [type(p) for p in chain] == [Temperature, TopK, TopP, MinP]
    assert apply_processors(torch.zeros(3), []).tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: Temperature(-0.5), "temperature"),
        (lambda: Temperature(float("inf")), "temperature"),
        (lambda: TopK(0), "top_k"),
        (lambda: TopK(2.0), "top_k"),
        (lambda: TopK(True), "top_k"),
        (lambda: TopK(5, min_tokens_to_keep=0), "min_tokens_to_keep"),
        (lambda: TopP(0.0), "top_p"),
        (lambda: TopP(1.01), "top_p"),
        (lambda: TopP(float("nan")), "top_p"),
        (lambda: TopP(0.9, min_tokens_to_keep=0), "min_tokens_to_keep"),
        (lambda: MinP(-0.01), "min_p"),
        (lambda: MinP(1.5), "min_p"),
        (lambda: MinP(0.1, min_tokens_to_keep=1.0), "min_tokens_to_keep"),
        (lambda: build_processors(top_k=-1), "top_k"),
        (lambda: sample(torch.zeros(4), temperature=-1.0), "temperature"),
        (lambda: sample(torch.zeros(4), top_p=0.0), "top_p"),
        (lambda: sample(torch.zeros(4), top_k=0), "top_k"),
        (lambda: sample(torch.zeros(4), min_p=2.0), "min_p"),
        (lambda: sample(torch.zeros(4), generator=123), "generator"),
        (lambda: sample(torch.zeros(2, 4), generator=[torch.Generator()]), "generator"),
        (lambda: sample(torch.zeros(4), generator=[None]), "generator"),
        (lambda: draw(torch.tensor([0.5, -0.5])), "probs"),
        (lambda: draw(torch.tensor([0.0, 0.0])), "probs"),
        (lambda: draw(torch.tensor([1, 0])), "probs"),
        (lambda: draw(torch.tensor([0.5, 0.5]), generator="seed"), "generator"),
        (lambda: row_generators(-1, 2), "seed"),
        (lambda: row_generators(2**64, 2), "seed"),
        (lambda: row_generators([1, 2], 3), "seed"),
        (lambda: row_generators([1, True], 2), "seed"),
        (lambda: row_seeds(1, -1), "rows"),
        (lambda: probabilities(torch.zeros(4), top_p=-0.5), "top_p"),
        (lambda: nucleus_size(torch.zeros(4), 1.5), "top_p"),
        (lambda: apply_processors(torch.zeros(4), ["not callable"]), "processors"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(make, name):
    with pytest.raises(ValueError, match=name):
        make()


@pytest.mark.parametrize("bad, message", [(float("nan"), "NaN"), (float("inf"), r"\+inf")])
@pytest.mark.parametrize(
    "call", [lambda x: sample(x), lambda x: probabilities(x, top_p=0.9), lambda x: TopP(0.9)(x), lambda x: MinP(0.1)(x)]
)
def test_bad_logits_raise(call, bad, message):
    logits = torch.zeros(2, 5)
    logits[1, 2] = bad
    with pytest.raises(ValueError, match=message):
        call(logits)


def test_all_minus_inf_row_and_integer_logits_raise():
    with pytest.raises(ValueError, match="-inf"):
        sample(torch.full((2, 3), float("-inf")))
    with pytest.raises(ValueError, match="floating-point"):
        sample(torch.zeros(3, dtype=torch.long))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu():
    from transformers.generation.logits_process import MinPLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    cpu = torch.randn(8, 131072, generator=torch.Generator().manual_seed(0)) * 2.5
    gpu = cpu.cuda()
    ids = torch.zeros(8, 1, dtype=torch.long)
    for ours, theirs in [(TopK(50), TopKLogitsWarper(50)), (TopP(0.9), TopPLogitsWarper(0.9)), (MinP(0.05), MinPLogitsWarper(0.05))]:
        on_gpu = ours(gpu)
        assert torch.equal(on_gpu, theirs(ids.cuda(), gpu)), f"{ours} differs from transformers on CUDA"
        # Continuous random logits: no ties, so CPU and CUDA keep the same tokens.
        assert torch.equal((on_gpu > float("-inf")).cpu(), ours(cpu) > float("-inf"))
    for settings in [dict(temperature=0.7, top_p=0.9), dict(top_k=50), dict(min_p=0.05), dict(temperature=0.8, top_k=200, top_p=0.95, min_p=0.02)]:
        p_gpu = probabilities(gpu, **settings)
        p_cpu = probabilities(cpu, **settings)
        assert torch.equal(p_gpu.cpu() > 0, p_cpu > 0)
        torch.testing.assert_close(p_gpu.cpu(), p_cpu, rtol=1e-5, atol=1e-7)
        a = sample(gpu, **settings, generator=torch.Generator(device="cuda").manual_seed(1))
        b = sample(gpu, **settings, generator=torch.Generator(device="cuda").manual_seed(1))
        assert a.device.type == "cuda" and torch.equal(a, b)
        assert bool((p_cpu.gather(-1, a.cpu()[:, None]) > 0).all()), "drew a filtered-out token"
    assert torch.equal(sample(gpu, temperature=0.0).cpu(), sample(cpu, temperature=0.0))
