import itertools
import math

import pytest
import torch

from llmbook.energy import (
    HopfieldNetwork,
    ags_retrieval_state,
    ags_retrieval_temperature,
    boltzmann,
    corrupt,
    entropy,
    free_energy,
    heat_capacity,
    log_partition,
    mean_energy,
    overlap,
    random_patterns,
    recall_accuracy,
)
from llmbook.sampling import temperature_softmax


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def network(n_units: int, n_patterns: int, seed: int = 0) -> tuple[HopfieldNetwork, torch.Tensor]:
    patterns = random_patterns(n_patterns, n_units, gen(seed))
    return HopfieldNetwork(n_units).store(patterns), patterns


def all_states(n_units: int) -> torch.Tensor:
    """Every +-1 state of n_units units, shape (2**n_units, n_units)."""
    return torch.tensor(list(itertools.product([-1.0, 1.0], repeat=n_units)))


# --------------------------------------------------------------------------------------
# Boltzmann distribution and thermodynamics.
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.05, 0.3, 1.0, 2.5, 100.0])
@pytest.mark.parametrize("scale", [1.0, 1e3, 1e5])
def test_boltzmann_of_negative_logits_is_the_temperature_softmax(temperature, scale):
    logits = torch.randn(4, 257, generator=gen(1)) * scale
    p = boltzmann(-logits, temperature)
    # Same operations in the same order: equal bit for bit, not just close.
    assert torch.equal(p, torch.softmax(logits / temperature, dim=-1))
    assert torch.equal(p, temperature_softmax(logits, temperature))
    assert torch.isfinite(p).all()
    assert torch.allclose(p.sum(-1), torch.ones(4))


def test_boltzmann_matches_the_textbook_formula_in_float64():
    energies = torch.tensor([[0.0, 0.5, 1.0, 3.0], [2.0, -1.0, 0.25, 0.25]], dtype=torch.float64)
    for t in (0.5, 1.0, 4.0):
        weights = torch.exp(-energies / t)
        expected = weights / weights.sum(-1, keepdim=True)
        assert torch.allclose(boltzmann(energies, t), expected, rtol=1e-12, atol=0)
        assert torch.allclose(log_partition(energies, t), weights.sum(-1).log(), rtol=1e-12, atol=0)


def test_zero_temperature_is_the_argmin_limit():
    energies = torch.tensor([[3.0, -1.0, 2.0, -1.0], [0.5, 0.1, 0.2, 0.3]])
    p = boltzmann(energies, 0.0)
    assert torch.equal(p, torch.tensor([[0.0, 0.5, 0.0, 0.5], [0.0, 1.0, 0.0, 0.0]]))
    assert torch.equal(p, temperature_softmax(-energies, 0.0))
    # And it is the limit: a tiny T gives the same distribution to float precision.
    assert torch.allclose(boltzmann(energies, 1e-3), p, atol=1e-6)
    assert torch.allclose(free_energy(energies, 0.0), torch.tensor([-1.0, 0.1]))
    assert torch.allclose(mean_energy(energies, 0.0), torch.tensor([-1.0, 0.1]))
    assert torch.allclose(entropy(energies, 0.0), torch.tensor([math.log(2), 0.0]))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        log_partition(energies, 0.0)


@pytest.mark.parametrize("temperature", [0.0, 0.1, 0.7, 1.0, 3.0, 50.0])
def test_free_energy_is_mean_energy_minus_t_times_entropy(temperature):
    energies = torch.randn(6, 40, generator=gen(2), dtype=torch.float64) * 3
    f = free_energy(energies, temperature)
    assert torch.allclose(f, mean_energy(energies, temperature) - temperature * entropy(energies, temperature), rtol=1e-10, atol=1e-10)


def test_entropy_and_mean_energy_are_derivatives_of_the_free_energy():
    # Independent of the identity above: S = -dF/dT and <E> = -d log Z / d(1/T), by central differences.
    energies = torch.tensor([0.0, 0.3, 1.1, 2.0, 2.0, 5.0], dtype=torch.float64)
    h = 1e-5
    for t in (0.4, 1.0, 3.0):
        dF_dT = (free_energy(energies, t + h) - free_energy(energies, t - h)) / (2 * h)
        assert entropy(energies, t).item() == pytest.approx(-dF_dT.item(), abs=1e-7)
        b = 1 / t
        dlogZ_db = (log_partition(energies, 1 / (b + h)) - log_partition(energies, 1 / (b - h))) / (2 * h)
        assert mean_energy(energies, t).item() == pytest.approx(-dlogZ_db.item(), abs=1e-7)


def test_entropy_limits():
    energies = torch.tensor([0.0, 0.1, 0.4, 1.0, 2.0, 7.0, 7.5, 9.0])  # a unique minimum
    n = energies.numel()
    assert entropy(energies, 1e5).item() == pytest.approx(math.log(n), abs=1e-4)
    assert entropy(energies, 1e-3).item() == pytest.approx(0.0, abs=1e-6)
    values = [entropy(energies, t).item() for t in (0.01, 0.1, 0.5, 1.0, 5.0, 100.0)]
    assert all(a < b for a, b in zip(values, values[1:])), values


def test_infinite_energy_has_zero_probability_and_finite_averages():
    energies = torch.tensor([0.0, 1.0, float("inf")])
    for t in (0.0, 0.5, 2.0):
        p = boltzmann(energies, t)
        assert p[2].item() == 0.0
        for quantity in (mean_energy, entropy, free_energy):
            assert math.isfinite(quantity(energies, t).item())
    assert torch.allclose(boltzmann(energies, 1.0)[:2], boltzmann(energies[:2], 1.0))


@pytest.mark.parametrize("bad", [-0.1, -1, float("nan"), float("inf"), "1", True, None])
@pytest.mark.parametrize("fn", [boltzmann, log_partition, free_energy, mean_energy, entropy])
def test_bad_temperature_names_the_argument_and_range(fn, bad):
    with pytest.raises(ValueError, match=r"temperature must be a finite number >= 0"):
        fn(torch.zeros(3), bad)


@pytest.mark.parametrize(
    "energies, message",
    [
        (torch.tensor([0.0, float("nan")]), "NaN"),
        (torch.tensor([0.0, float("-inf")]), "-inf"),
        (torch.tensor([float("inf"), float("inf")]), r"\+inf"),
        (torch.tensor([1, 2]), "floating-point"),
        (torch.zeros(2, 0), "non-empty"),
        (torch.tensor(1.0), "non-empty"),
    ],
)
def test_bad_energies(energies, message):
    with pytest.raises(ValueError, match=message):
        boltzmann(energies, 1.0)


# --------------------------------------------------------------------------------------
# Hopfield network: weights, energy, dynamics.
# --------------------------------------------------------------------------------------


def test_hebbian_weights_symmetric_zero_diagonal_and_equal_to_the_rule():
    net, patterns = network(50, 4)
    w = net.weights
    assert torch.equal(w, w.T)
    assert torch.equal(torch.diagonal(w), torch.zeros(50))
    xi = patterns.double()
    expected = torch.einsum("pi,pj->ij", xi, xi) / 50
    expected.fill_diagonal_(0)
    assert torch.allclose(w.double(), expected, atol=1e-7)
    assert net.load == pytest.approx(4 / 50)
    # store replaces the weights (a rerun notebook cell must not store patterns twice).
    net.store(patterns)
    assert torch.equal(net.weights, w)
    assert torch.equal(HopfieldNetwork(50).store(patterns[0]).weights, HopfieldNetwork(50).store(patterns[:1]).weights)


def test_energy_is_minus_half_s_w_s():
    net, _ = network(30, 3)
    states = random_patterns(7, 30, gen(5))
    w = net.weights.double()
    expected = torch.stack([-0.5 * s.double() @ w @ s.double() for s in states])
    assert torch.allclose(net.energy(states).double(), expected, atol=1e-5)
    assert torch.allclose(net.local_field(states).double(), states.double() @ w, atol=1e-6)
    assert net.energy(states.reshape(7, 1, 30)).shape == (7, 1)


@pytest.mark.parametrize("temperature", [0.3, 1.0, 2.0])
def test_glauber_probability_is_the_two_state_boltzmann_conditional(temperature):
    net, _ = network(20, 3)
    states = random_patterns(16, 20, gen(7))
    for unit in (0, 7, 19):
        up, down = states.clone(), states.clone()
        up[:, unit], down[:, unit] = 1.0, -1.0
        pair = torch.stack([net.energy(up), net.energy(down)], dim=-1).double()  # E(s_i=+1), E(s_i=-1)
        exact = boltzmann(pair, temperature)[:, 0]
        got = net.update_probability(states, unit, temperature).double()
        assert torch.allclose(got, exact, atol=1e-6)


def test_zero_temperature_update_is_sign_and_a_tie_keeps_the_value():
    # The two patterns' contributions to unit 0's couplings cancel: h_0 = 0 in every state.
    patterns = torch.tensor([[1.0, 1.0, 1.0, 1.0], [-1.0, 1.0, 1.0, 1.0]])
    net = HopfieldNetwork(4).store(patterns)
    state = torch.tensor([[1.0, 1.0, -1.0, 1.0], [-1.0, 1.0, 1.0, -1.0]])
    assert torch.equal(net.local_field(state)[:, 0], torch.zeros(2))
    assert torch.equal(net.update_probability(state, 0, 0.0), torch.tensor([1.0, 0.0]))
    for seed in range(5):
        final = net.recall(state, 0.0, sweeps=2, generator=gen(seed))
        assert torch.equal(final[:, 0], state[:, 0])  # a tie keeps the value
        assert torch.equal(final[:, 1:], torch.ones(2, 3))  # the others follow sign(h)
    # Every state and unit: 1 if h > 0, 0 if h < 0, and the current value's indicator on a tie.
    states = all_states(4)
    fields = net.local_field(states)
    for unit in range(4):
        h, current = fields[:, unit], (states[:, unit] > 0).float()
        expected = torch.where(h > 0, 1.0, torch.where(h < 0, 0.0, current))
        assert torch.equal(net.update_probability(states, unit, 0.0), expected)


def test_glauber_dynamics_samples_the_boltzmann_distribution():
    # The reference: detailed balance makes exp(-E/T)/Z the stationary distribution. On 5
    # units, enumerate all 32 states and compare with 20000 chains after 30 sweeps.
    n = 5
    patterns = torch.tensor([[1.0, 1.0, -1.0, 1.0, -1.0], [1.0, -1.0, -1.0, 1.0, 1.0]])
    net = HopfieldNetwork(n).store(patterns)
    states = all_states(n)
    codes = ((states > 0).long() * (2 ** torch.arange(n - 1, -1, -1))).sum(-1)
    assert torch.equal(codes, torch.arange(2**n))
    g = gen(11)
    starts = random_patterns(20000, n, g)
    final = net.recall(starts, 0.5, sweeps=30, generator=g)
    counts = torch.bincount(((final > 0).long() * (2 ** torch.arange(n - 1, -1, -1))).sum(-1), minlength=2**n)
    empirical = counts.double() / counts.sum()
    exact = boltzmann(net.energy(states).double(), 0.5)
    assert 0.5 * (empirical - exact).abs().sum().item() < 0.02
    # The test has power: the distribution at another temperature is far away.
    assert 0.5 * (empirical - boltzmann(net.energy(states).double(), 1.5)).abs().sum().item() > 0.1


def test_energy_never_increases_at_zero_temperature():
    net, patterns = network(60, 6)
    g = gen(3)
    starts = torch.cat([corrupt(patterns, 0.3, g), random_patterns(10, 60, g)])
    final, energies = net.recall(starts, 0.0, sweeps=5, generator=g, return_energies=True)
    assert energies.shape == (5 * 60 + 1, 16)
    assert (energies[1:] <= energies[:-1]).all()
    assert (energies[-1] < energies[0]).all()  # every start moved downhill somewhere
    # The trajectory is tracked incrementally; its ends must be the energies of the states.
    assert torch.allclose(energies[0], net.energy(starts), atol=1e-5)
    assert torch.allclose(energies[-1], net.energy(final), atol=1e-5)


def test_energy_can_rise_at_positive_temperature():
    net, patterns = network(60, 3)
    _, energies = net.recall(patterns, 1.0, sweeps=2, generator=gen(0), return_energies=True)
    assert (energies[1:] > energies[:-1]).any()


def test_stored_patterns_are_fixed_points_at_low_load():
    net, patterns = network(100, 3)
    final = net.recall(patterns, 0.0, sweeps=3, generator=gen(0))
    assert torch.equal(final, patterns)
    assert torch.equal(torch.sign(net.local_field(patterns)), patterns)


def test_recall_from_corruption_at_zero_temperature_and_its_loss_when_hot():
    net, patterns = network(100, 5, seed=4)
    g = gen(9)
    targets = patterns[torch.arange(200) % 5]
    starts = corrupt(targets, 0.15, g)
    cold = overlap(net.recall(starts, 0.0, sweeps=10, generator=g), targets)
    hot = overlap(net.recall(starts, 2.0, sweeps=10, generator=g), targets)
    assert (cold == 1).float().mean().item() >= 0.95
    assert hot.mean().item() < 0.2
    assert overlap(starts, targets).mean().item() == pytest.approx(0.7)


def test_recall_keeps_batch_shape_and_does_not_modify_its_input():
    net, patterns = network(20, 2)
    start = corrupt(patterns, 0.1, gen(0)).reshape(2, 1, 20)
    copy = start.clone()
    final, energies = net.recall(start, 0.5, sweeps=2, generator=gen(0), return_energies=True)
    assert final.shape == (2, 1, 20) and energies.shape == (41, 2, 1)
    assert torch.equal(start, copy)
    assert net.recall(patterns[0], 0.0, sweeps=1).shape == (20,)
    assert torch.equal(net.recall(start, 1.0, sweeps=0), start)


def test_mean_field_overlap_of_a_single_pattern():
    # One stored pattern is the Curie-Weiss ferromagnet in disguise: at large N the
    # retrieval overlap solves m = tanh(m / T) (0.9575 at T = 0.5, 0.7758 at T = 0.75).
    result = recall_accuracy(n_units=400, n_patterns=1, flip_fraction=0.2, temperatures=(0.5, 0.75), n_trials=50, sweeps=15, seed=0)
    for t, m in zip(result.temperatures, result.mean_overlap):
        fixed_point = 1.0
        for _ in range(500):
            fixed_point = math.tanh(fixed_point / t)
        assert m == pytest.approx(fixed_point, abs=0.03)


# --------------------------------------------------------------------------------------
# Helpers.
# --------------------------------------------------------------------------------------


def test_random_patterns_are_plus_minus_one_and_balanced():
    p = random_patterns(50, 200, gen(0))
    assert p.shape == (50, 200) and p.dtype == torch.float32
    assert ((p == 1) | (p == -1)).all()
    assert abs(p.mean().item()) < 0.02
    assert torch.equal(p, random_patterns(50, 200, gen(0)))


@pytest.mark.parametrize("fraction, flips", [(0.0, 0), (0.1, 10), (0.15, 15), (0.2, 20), (0.333, 33), (1.0, 100)])
def test_corrupt_flips_exactly_round_fraction_times_n(fraction, flips):
    pattern = random_patterns(1, 100, gen(1))[0]
    noisy = corrupt(pattern.expand(30, 100), fraction, gen(2))
    assert ((noisy != pattern).sum(-1) == flips).all()
    assert overlap(noisy, pattern).allclose(torch.full((30,), 1 - 2 * flips / 100))
    if 0 < flips < 100:
        assert len({tuple(row.tolist()) for row in noisy}) > 1  # each row its own subset


def test_overlap():
    pattern = torch.tensor([1.0, -1.0, 1.0, 1.0])
    assert overlap(pattern, pattern).item() == 1.0
    assert overlap(-pattern, pattern).item() == -1.0
    assert overlap(torch.tensor([[1.0, 1.0, 1.0, 1.0]]), pattern).tolist() == [0.5]
    assert overlap(torch.tensor([1, -1, 1, 1]), pattern).item() == 1.0  # integer states are fine


# --------------------------------------------------------------------------------------
# The chapter's measurement.
# --------------------------------------------------------------------------------------


def test_recall_accuracy_is_deterministic_and_returns_plain_floats():
    kwargs = dict(n_units=40, n_patterns=3, flip_fraction=0.2, temperatures=[0, 0.5, 2], n_trials=30, sweeps=5)
    a = recall_accuracy(**kwargs, seed=1)
    assert a == recall_accuracy(**kwargs, seed=1)
    assert a != recall_accuracy(**kwargs, seed=2)
    fields = (a.mean_overlap, a.exact_recall, a.mean_abs_overlap, a.abs_overlap_se, a.mirror_fraction, a.temperatures)
    assert all(type(x) is float for x in sum(fields, ()))
    assert set(a.as_dict()[0.5]) == {"mean_overlap", "exact_recall", "mean_abs_overlap", "abs_overlap_se", "mirror_fraction"}
    assert set(a.as_dict()) == {0.0, 0.5, 2.0}
    assert a.as_dict()[0.0]["exact_recall"] == a.exact_recall[0]
    assert len(a.table().splitlines()) == 4


def test_recall_accuracy_equals_recall_per_temperature():
    # The common random numbers claim: a temperature's result is what recall gives it alone.
    n, p, trials, sweeps, seed = 50, 4, 40, 6, 3
    temps = (0.0, 0.4, 1.2)
    result = recall_accuracy(n, p, 0.2, temps, trials, sweeps, seed)
    g = torch.Generator().manual_seed(seed)
    patterns = random_patterns(p, n, g)
    targets = patterns[torch.arange(trials) % p]
    starts = corrupt(targets, 0.2, g)
    state = g.get_state()
    net = HopfieldNetwork(n).store(patterns)
    for t, m, e in zip(temps, result.mean_overlap, result.exact_recall):
        g.set_state(state)
        dots = (net.recall(starts, t, sweeps, g) * targets).sum(-1).double()
        assert m == pytest.approx(dots.mean().item() / n, abs=1e-12)
        assert e == (dots == n).double().mean().item()
        m_trials = dots / n
        assert result.as_dict()[t]["mean_abs_overlap"] == pytest.approx(m_trials.abs().mean().item(), abs=1e-12)
        se = m_trials.abs().std().item() / math.sqrt(trials)
        assert result.as_dict()[t]["abs_overlap_se"] == pytest.approx(se, rel=1e-9)
        assert result.as_dict()[t]["mirror_fraction"] == (m_trials < 0).double().mean().item()
    # Listing another temperature does not change the others.
    assert recall_accuracy(n, p, 0.2, (0.4,), trials, sweeps, seed).mean_overlap[0] == result.mean_overlap[1]


def test_absolute_overlap_counts_the_mirror_image_as_retrieved():
    # Every unit flipped: the start is the mirror -xi, itself a minimum of the even energy.
    r = recall_accuracy(60, 2, 1.0, (0.0,), n_trials=10, sweeps=5, seed=0)
    assert r.mean_overlap == (-1.0,) and r.exact_recall == (0.0,)
    assert r.mean_abs_overlap == (1.0,) and r.mirror_fraction == (1.0,) and r.abs_overlap_se == (0.0,)
    # Far above T_c the final states are unrelated to the pattern: the signed mean is near 0,
    # half the trials end mirrored, and |m| sits at the random floor sqrt(2 / (pi N)).
    hot = recall_accuracy(100, 1, 0.2, (5.0,), n_trials=400, sweeps=10, seed=0)
    assert abs(hot.mean_overlap[0]) < 0.02
    assert 0.4 < hot.mirror_fraction[0] < 0.6
    assert hot.mean_abs_overlap[0] == pytest.approx(math.sqrt(2 / (math.pi * 100)), abs=4 * hot.abs_overlap_se[0])
    # One trial has no standard error.
    assert math.isnan(recall_accuracy(20, 1, 0.2, (0.5,), n_trials=1, sweeps=2, seed=0).abs_overlap_se[0])


def test_recall_accuracy_degrades_with_temperature():
    r = recall_accuracy(100, 5, 0.2, (0.0, 0.5, 1.0, 2.0), n_trials=100, sweeps=10, seed=0)
    assert r.mean_overlap[0] > 0.98 and r.exact_recall[0] > 0.9
    assert r.mean_overlap[0] > r.mean_overlap[1] > r.mean_overlap[2]
    assert r.mean_overlap[3] < 0.2


# --------------------------------------------------------------------------------------
# Bad input.
# --------------------------------------------------------------------------------------


def test_bad_hopfield_arguments_name_the_argument():
    net, patterns = network(10, 2)
    with pytest.raises(ValueError, match=r"temperature must be a finite number >= 0"):
        net.recall(patterns, -0.5)
    with pytest.raises(ValueError, match=r"temperature must be a finite number >= 0"):
        net.update_probability(patterns, 0, -1.0)
    with pytest.raises(ValueError, match=r"patterns must contain only -1 and \+1"):
        HopfieldNetwork(3).store(torch.tensor([[1.0, 0.0, -1.0]]))
    with pytest.raises(ValueError, match=r"patterns must have last dimension n_units=10"):
        net.store(torch.ones(2, 9))
    with pytest.raises(ValueError, match=r"patterns must have shape"):
        net.store(torch.ones(2, 2, 10))
    with pytest.raises(ValueError, match=r"state must have last dimension n_units=10"):
        net.recall(torch.ones(3, 11))
    with pytest.raises(ValueError, match=r"state must contain only -1 and \+1"):
        net.energy(torch.full((10,), 0.5))
    with pytest.raises(ValueError, match=r"unit must be an int in \[0, 9\]"):
        net.update_probability(patterns, 10, 1.0)
    with pytest.raises(ValueError, match=r"sweeps must be an int >= 0"):
        net.recall(patterns, 0.0, sweeps=-1)
    with pytest.raises(ValueError, match=r"generator must be a torch.Generator"):
        net.recall(patterns, 0.0, generator=0)
    with pytest.raises(ValueError, match=r"n_units must be an int >= 1"):
        HopfieldNetwork(0)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "0.2", True])
def test_bad_flip_fraction(bad):
    with pytest.raises(ValueError, match=r"flip_fraction must be a number in \[0, 1\]"):
        corrupt(torch.ones(10), bad)
    with pytest.raises(ValueError, match=r"flip_fraction must be a number in \[0, 1\]"):
        recall_accuracy(flip_fraction=bad)


def test_bad_helper_and_measurement_arguments():
    with pytest.raises(ValueError, match=r"pattern must contain only -1 and \+1"):
        corrupt(torch.tensor([1.0, 2.0]), 0.5)
    with pytest.raises(ValueError, match=r"pattern must have last dimension n_units=3"):
        overlap(torch.ones(3), torch.ones(4))
    with pytest.raises(ValueError, match=r"n_patterns must be an int >= 1"):
        random_patterns(0, 5)
    with pytest.raises(ValueError, match=r"temperatures must be a finite number >= 0"):
        recall_accuracy(temperatures=[0.0, -1.0])
    with pytest.raises(ValueError, match=r"temperatures must be a non-empty sequence"):
        recall_accuracy(temperatures=[])
    with pytest.raises(ValueError, match=r"n_trials must be an int >= 1"):
        recall_accuracy(n_trials=0)
    with pytest.raises(ValueError, match=r"seed must be an int"):
        recall_accuracy(seed=1.5)


# --------------------------------------------------------------------------------------
# Device paths.
# --------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_paths():
    logits = torch.randn(3, 100, generator=gen(0))
    assert torch.allclose(boltzmann(-logits.cuda(), 0.7).cpu(), boltzmann(-logits, 0.7), atol=1e-6)
    g = torch.Generator(device="cuda").manual_seed(0)
    patterns = random_patterns(5, 100, g)
    assert patterns.device.type == "cuda"
    net = HopfieldNetwork(100).store(patterns)
    assert net.device.type == "cuda"
    starts = corrupt(patterns.repeat(20, 1), 0.15, g)
    final, energies = net.recall(starts, 0.0, sweeps=5, generator=g, return_energies=True)
    assert (energies[1:] <= energies[:-1]).all()
    assert (overlap(final, patterns.repeat(20, 1)) == 1).float().mean().item() >= 0.95
    r = recall_accuracy(100, 5, 0.2, (0.0, 2.0), n_trials=50, sweeps=10, seed=0, device="cuda")
    assert r == recall_accuracy(100, 5, 0.2, (0.0, 2.0), n_trials=50, sweeps=10, seed=0, device="cuda")
    assert r.exact_recall[0] > 0.9 and r.mean_overlap[1] < 0.2
    with pytest.raises(ValueError, match="generator is on cpu"):
        net.recall(starts, 0.0, generator=gen(0))


@pytest.mark.parametrize("temperature", [0.3, 1.0, 2.5])
def test_heat_capacity_is_the_derivative_of_the_mean_energy(temperature):
    energies = torch.randn(4, 50, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    h = 1e-5
    slope = (mean_energy(energies, temperature + h) - mean_energy(energies, temperature - h)) / (2 * h)
    c = heat_capacity(energies, temperature)
    assert torch.allclose(c, slope, rtol=1e-6, atol=1e-9)
    assert (c >= 0).all()
    assert torch.allclose(heat_capacity(energies + 11.0, temperature), c)  # no zero point of energy


def test_heat_capacity_limits_and_infinite_energies():
    energies = torch.tensor([[0.0, 1.0, math.inf], [2.0, 2.0, 2.0]], dtype=torch.float64)
    assert torch.equal(heat_capacity(energies, 0.0), torch.zeros(2, dtype=torch.float64))
    c = heat_capacity(energies, 1.0)
    assert torch.isfinite(c).all() and c[1] == 0.0  # equal energies: nothing to reorganise
    # two levels 0 and 1 at T = 1: Var = p(1 - p) with p = e^-1 / (1 + e^-1)
    p = math.exp(-1) / (1 + math.exp(-1))
    assert c[0].item() == pytest.approx(p * (1 - p))
    with pytest.raises(ValueError, match="temperature"):
        heat_capacity(energies, -1.0)


# --------------------------------------------------------------------------------------
# The AGS replica-symmetric theory of the retrieval temperature.
# --------------------------------------------------------------------------------------


def test_ags_at_zero_load_is_the_curie_weiss_equation():
    assert ags_retrieval_temperature(0.0) == 1.0
    # T_M(alpha) -> 1 as alpha -> 0, like 1 - 1.95 sqrt(alpha)
    assert ags_retrieval_temperature(1e-4) == pytest.approx(1 - 1.95 * 0.01, abs=0.003)
    for t in (0.5, 0.75, 0.95):
        fixed_point = 1.0
        for _ in range(5000):
            fixed_point = math.tanh(fixed_point / t)
        m, q, _ = ags_retrieval_state(0.0, t)
        assert m == pytest.approx(fixed_point, abs=1e-6)
        assert q == pytest.approx(fixed_point**2, abs=1e-6)
    assert ags_retrieval_state(0.0, 1.05)[0] == 0.0


def test_ags_retrieval_temperature_matches_the_small_load_expansion_and_known_values():
    # Small alpha: the expansion 1 - 1.95 sqrt(alpha) (0.805 at alpha = 0.01).
    assert ags_retrieval_temperature(0.01) == pytest.approx(0.80, abs=0.01)
    assert ags_retrieval_temperature(0.01) == pytest.approx(1 - 1.95 * 0.1, abs=0.01)
    # Larger alpha: the full theory lies below the expansion (AGS 1987, their phase diagram).
    assert ags_retrieval_temperature(0.05) == pytest.approx(0.54, abs=0.01)
    assert ags_retrieval_temperature(0.1) == pytest.approx(0.315, abs=0.005)
    assert ags_retrieval_temperature(0.12) < 1 - 1.95 * math.sqrt(0.12) - 0.05


def test_ags_retrieval_temperature_reaches_zero_at_the_capacity():
    # alpha_c ~ 0.138: just below it retrieval survives only at low T, above it not at all.
    assert 0.0 < ags_retrieval_temperature(0.137) < 0.1
    assert ags_retrieval_temperature(0.14) == 0.0
    assert ags_retrieval_state(0.14, 0.01)[0] == 0.0


def test_ags_retrieval_state_is_a_fixed_point_and_vanishes_above_t_m():
    alpha, t = 0.05, 0.4
    m, q, r = ags_retrieval_state(alpha, t)
    assert 0.5 < m < 1 and m**2 <= q < 1
    z = torch.linspace(-10, 10, 20001, dtype=torch.float64)
    w = torch.exp(-0.5 * z**2)
    w = w / w.sum()
    tanh = torch.tanh((m + math.sqrt(alpha * r) * z) / t)
    assert float((w * tanh).sum()) == pytest.approx(m, abs=1e-6)
    assert float((w * tanh**2).sum()) == pytest.approx(q, abs=1e-6)
    assert r == pytest.approx(q / (1 - (1 - q) / t) ** 2, rel=1e-4)
    t_m = ags_retrieval_temperature(alpha)
    assert ags_retrieval_state(alpha, t_m - 0.005)[0] > 0.5  # a jump: m stays large up to T_M
    assert ags_retrieval_state(alpha, t_m + 0.005)[0] == 0.0


@pytest.mark.parametrize("bad", [-0.1, float("nan"), "0.1", True])
def test_ags_bad_arguments(bad):
    with pytest.raises(ValueError, match="alpha"):
        ags_retrieval_temperature(bad)
    with pytest.raises(ValueError, match="alpha"):
        ags_retrieval_state(bad, 0.5)
    with pytest.raises(ValueError, match="temperature"):
        ags_retrieval_state(0.05, 0.0)
