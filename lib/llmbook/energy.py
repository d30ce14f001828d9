"""Softmax as a Boltzmann distribution, and a Hopfield network that samples one.

Statistical physics gives a state i with energy E_i at temperature T the probability
p_i = exp(-E_i / T) / Z, with the partition function Z = sum_j exp(-E_j / T) (units with
Boltzmann's constant k_B = 1). Reading a logit as a negative energy, z_i = -E_i, this *is*
the temperature softmax of :mod:`llmbook.sampling`: ``boltzmann(-logits, T)`` equals
``temperature_softmax(logits, T)``. The thermodynamic quantities come along for free:
log Z, the free energy F = -T log Z, the mean energy <E> and the entropy S, tied by
F = <E> - T S.

A Hopfield network (Hopfield 1982) is the classic system that *has* such an energy: N
units s_i = +-1, symmetric weights W with zero diagonal, and E(s) = -1/2 s^T W s. Storing
patterns with the Hebbian rule W = (1/N) sum_mu xi^mu xi^mu^T makes them low-energy
states, and asynchronous updates roll a corrupted pattern downhill back to the stored
one. At temperature T > 0 the update is stochastic (Glauber, or heat-bath, dynamics):
unit i becomes +1 with probability sigmoid(2 h_i / T), h_i = sum_j W_ij s_j, which is
exactly the Boltzmann probability of s_i = +1 given the other units; run long enough,
the network samples the Boltzmann distribution over all 2^N states. T = 0 is the
deterministic rule s_i <- sign(h_i).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

# --------------------------------------------------------------------------------------
# Argument checks.
# --------------------------------------------------------------------------------------


def _check_temperature(temperature: float, name: str = "temperature") -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ValueError(f"{name} must be a finite number >= 0, got {temperature!r}")
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {temperature}")
    return float(temperature)


def _check_energies(energies: torch.Tensor) -> torch.Tensor:
    if not isinstance(energies, torch.Tensor) or not energies.is_floating_point():
        raise ValueError("energies must be a floating-point torch.Tensor")
    if energies.ndim == 0 or energies.shape[-1] == 0:
        raise ValueError(f"energies must have a non-empty last (state) dimension, got shape {tuple(energies.shape)}")
    # A state at +inf energy has probability 0 (like a masked logit); -inf would take all
    # the mass with an infinite Z, and NaN has no meaning.
    if torch.isnan(energies).any():
        raise ValueError("energies contain NaN")
    if (energies == float("-inf")).any():
        raise ValueError("energies contain -inf; energies must be finite or +inf (probability 0)")
    if (energies.amin(dim=-1) == float("inf")).any():
        raise ValueError("every energy of a row is +inf: no state has nonzero probability")
    return energies


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_positive_int(value: int, name: str) -> int:
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def _check_generator(generator: torch.Generator | None, device: torch.device) -> None:
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if generator.device.type != device.type:
        raise ValueError(f"generator is on {generator.device.type} but the tensors are on {device}; create it on the same device")


def _check_spins(x: torch.Tensor, name: str, n_units: int | None = None) -> torch.Tensor:
    """``x`` (..., N) with every entry -1 or +1."""
    if not isinstance(x, torch.Tensor) or x.dtype == torch.bool or x.is_complex():
        raise ValueError(f"{name} must be a real torch.Tensor of -1 and +1 entries, got {type(x).__name__}")
    if x.ndim == 0 or x.shape[-1] == 0:
        raise ValueError(f"{name} must have a non-empty last (unit) dimension, got shape {tuple(x.shape)}")
    if n_units is not None and x.shape[-1] != n_units:
        raise ValueError(f"{name} must have last dimension n_units={n_units}, got shape {tuple(x.shape)}")
    if not ((x == 1) | (x == -1)).all():
        raise ValueError(f"{name} must contain only -1 and +1 entries")
    return x


# --------------------------------------------------------------------------------------
# The Boltzmann distribution over the last dimension of ``energies``.
# T = 0 is allowed where the T -> 0 limit is finite: the distribution puts all mass on the
# lowest energy (shared equally among ties), F and <E> tend to the minimum energy and S to
# log(number of ties). log Z itself diverges there (like -E_min / T), so log_partition
# needs T > 0.
# --------------------------------------------------------------------------------------


def boltzmann(energies: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """p_i = exp(-E_i / T) / Z over the last dimension; ``boltzmann(-logits, T)`` is the temperature softmax.

    ``temperature == 0`` returns the T -> 0 limit: all mass on the lowest energy, shared
    equally among ties (as :func:`llmbook.sampling.temperature_softmax` does for the
    largest logit).
    """
    temperature = _check_temperature(temperature)
    energies = _check_energies(energies)
    if temperature == 0.0:
        is_min = energies == energies.amin(dim=-1, keepdim=True)
        return is_min.to(energies.dtype) / is_min.sum(dim=-1, keepdim=True).to(energies.dtype)
    # Negate, then divide: the same operations as softmax(logits / T) with logits = -E,
    # so the two agree bit for bit. softmax subtracts the row maximum, so large energies
    # neither overflow nor underflow the sum.
    return torch.softmax(-energies / temperature, dim=-1)


def log_partition(energies: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log Z = log sum_i exp(-E_i / T) over the last dimension (logsumexp, stable); needs T > 0."""
    temperature = _check_temperature(temperature)
    if temperature == 0.0:
        raise ValueError("temperature must be > 0 for log_partition: log Z diverges like -min(E) / T as T -> 0")
    energies = _check_energies(energies)
    return torch.logsumexp(-energies / temperature, dim=-1)


def free_energy(energies: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """F = -T log Z over the last dimension; at T = 0 the limit, the lowest energy."""
    temperature = _check_temperature(temperature)
    energies = _check_energies(energies)
    if temperature == 0.0:
        return energies.amin(dim=-1)
    return -temperature * log_partition(energies, temperature)


def mean_energy(energies: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """<E> = sum_i p_i E_i under the Boltzmann distribution, over the last dimension."""
    p = boltzmann(energies, temperature)
    # A +inf energy has p = 0; 0 * inf would be NaN, but the state contributes nothing.
    return torch.where(p > 0, p * energies, torch.zeros_like(p)).sum(dim=-1)


def heat_capacity(energies: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """C = d<E>/dT = Var(E) / T^2 under the Boltzmann distribution, over the last dimension.

    Large where a small change of T moves much probability between states of different
    energy: a peak of C marks the temperature at which the distribution reorganises. For
    one softmax this is a smooth Schottky peak of a finite system, not a phase transition.
    At T = 0 the limit, 0. Does not depend on a shift of all energies.
    """
    temperature = _check_temperature(temperature)
    energies = _check_energies(energies)
    if temperature == 0.0:
        return torch.zeros(energies.shape[:-1], dtype=energies.dtype, device=energies.device)
    p = boltzmann(energies, temperature)
    deviation = energies - mean_energy(energies, temperature).unsqueeze(-1)
    # As in mean_energy: a +inf energy has p = 0 and contributes nothing (not 0 * inf = NaN).
    variance = torch.where(p > 0, p * deviation**2, torch.zeros_like(p)).sum(dim=-1)
    return variance / temperature**2


def entropy(energies: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """S = -sum_i p_i log p_i (nats) of the Boltzmann distribution, over the last dimension.

    Computed from log p (log_softmax), not from log of the rounded p, so states with tiny
    probabilities are accounted exactly. S grows from log(number of lowest-energy states)
    at T = 0 to log(number of states) as T -> infinity.
    """
    temperature = _check_temperature(temperature)
    energies = _check_energies(energies)
    if temperature == 0.0:
        p = boltzmann(energies, 0.0)
        return torch.special.entr(p).sum(dim=-1) + 0.0  # + 0.0 turns -0.0 into 0.0
    log_p = torch.log_softmax(-energies / temperature, dim=-1)
    p = log_p.exp()
    return -torch.where(p > 0, p * log_p, torch.zeros_like(p)).sum(dim=-1) + 0.0


# --------------------------------------------------------------------------------------
# Hopfield network.
# --------------------------------------------------------------------------------------


def random_patterns(
    n_patterns: int,
    n_units: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``n_patterns`` independent uniform +-1 patterns, float32 of shape (n_patterns, n_units).

    ``device`` defaults to the generator's device (the CPU without one).
    """
    n_patterns = _check_positive_int(n_patterns, "n_patterns")
    n_units = _check_positive_int(n_units, "n_units")
    if device is not None:
        device = torch.device(device)
    else:
        device = generator.device if isinstance(generator, torch.Generator) else torch.device("cpu")
    _check_generator(generator, device)
    bits = torch.randint(0, 2, (n_patterns, n_units), generator=generator, device=device)
    return bits.to(torch.float32) * 2 - 1


def corrupt(pattern: torch.Tensor, flip_fraction: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A copy of ``pattern`` (..., N) with exactly ``round(flip_fraction * N)`` units flipped in each row.

    The flipped units are a uniformly random subset, drawn independently for every row.
    ``round`` is Python's (halves go to the even integer: 2.5 -> 2).
    """
    pattern = _check_spins(pattern, "pattern")
    if isinstance(flip_fraction, bool) or not isinstance(flip_fraction, (int, float)) or not 0.0 <= flip_fraction <= 1.0:
        raise ValueError(f"flip_fraction must be a number in [0, 1], got {flip_fraction!r}")
    _check_generator(generator, pattern.device)
    n_units = pattern.shape[-1]
    n_flips = round(flip_fraction * n_units)
    # Ranking i.i.d. uniforms gives a uniformly random permutation per row; its first
    # n_flips entries are a uniformly random subset of that size.
    noise = torch.rand(pattern.shape, generator=generator, device=pattern.device)
    flipped = noise.argsort(dim=-1)[..., :n_flips]
    sign = torch.ones_like(pattern).scatter_(-1, flipped, -1)
    return pattern * sign


def overlap(state: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """m = (1/N) s . xi over the last dimension: 1 when s equals xi, -1 for its mirror image, ~0 when unrelated.

    ``state`` and ``pattern`` broadcast against each other (e.g. a batch of states (B, N)
    against one pattern (N,)).
    """
    state = _check_spins(state, "state")
    pattern = _check_spins(pattern, "pattern", n_units=state.shape[-1])
    return (state.to(torch.float32) * pattern.to(torch.float32)).sum(dim=-1) / state.shape[-1]


class HopfieldNetwork:
    """N binary units s_i = +-1 with Hebbian weights, energy E(s) = -1/2 s^T W s and Glauber dynamics.

    ``net = HopfieldNetwork(100).store(patterns)``; ``net.recall(corrupt(patterns[0], 0.2))``.
    States are tensors of shape (..., N) with -1/+1 entries; every method accepts a batch.
    The network lives on one device (``store`` moves it to the patterns' device) and the
    states and generator passed to it must be there too.
    """

    def __init__(self, n_units: int, device: torch.device | str | None = None) -> None:
        self.n_units = _check_positive_int(n_units, "n_units")
        device = torch.device(device) if device is not None else torch.device("cpu")
        # ``counts`` = sum_mu xi xi^T with a zero diagonal, integer-valued, and W = counts / N.
        # Fields and energies are computed from counts and divided by N at the end: sums of
        # integers are exact in float32 (below 2^24), so a tie h_i = 0 is exactly 0 and the
        # T = 0 energy never rises by a rounding error. Sums of the inexact 1/N would not be.
        self.counts = torch.zeros(n_units, n_units, device=device)
        self.patterns = torch.zeros(0, n_units, device=device)

    @property
    def device(self) -> torch.device:
        return self.counts.device

    @property
    def weights(self) -> torch.Tensor:
        """W = (1/N) sum_mu xi^mu xi^mu^T with zero diagonal, shape (N, N)."""
        return self.counts / self.n_units

    @property
    def load(self) -> float:
        """alpha = P / N, patterns per unit; random patterns stay retrievable up to about 0.138 at T = 0."""
        return self.patterns.shape[0] / self.n_units

    def store(self, patterns: torch.Tensor) -> HopfieldNetwork:
        """Set the weights by the Hebbian rule from ``patterns`` (P, N) (or one pattern (N,)); returns self.

        The weights are *replaced*, not added to, so rerunning a notebook cell does not
        store the patterns twice. The network moves to the patterns' device.
        """
        patterns = _check_spins(patterns, "patterns", n_units=self.n_units)
        if patterns.ndim == 1:
            patterns = patterns[None]
        if patterns.ndim != 2:
            raise ValueError(f"patterns must have shape (n_patterns, n_units) or (n_units,), got {tuple(patterns.shape)}")
        xi = patterns.to(torch.float32)
        counts = xi.T @ xi  # sum over patterns of the outer products xi xi^T
        counts.fill_diagonal_(0.0)  # no self-coupling: a unit does not reinforce itself
        self.counts = counts
        self.patterns = xi.clone()
        return self

    def _check_state(self, state: torch.Tensor) -> torch.Tensor:
        state = _check_spins(state, "state", n_units=self.n_units)
        if state.device != self.device:
            raise ValueError(f"state is on {state.device} but the network is on {self.device}; move one of them")
        return state.to(torch.float32)

    def energy(self, state: torch.Tensor) -> torch.Tensor:
        """E(s) = -1/2 s^T W s for a state (N,) or a batch (..., N); returns shape (...)."""
        s = self._check_state(state)
        return -0.5 * ((s @ self.counts) * s).sum(dim=-1) / self.n_units

    def local_field(self, state: torch.Tensor) -> torch.Tensor:
        """h = W s, the input each unit receives from the others; shape of ``state``."""
        s = self._check_state(state)
        return (s @ self.counts) / self.n_units  # counts is symmetric: s @ C == (C s)^T

    def update_probability(self, state: torch.Tensor, unit: int, temperature: float) -> torch.Tensor:
        """P(unit becomes +1 | the other units) under the heat-bath update; shape (...).

        sigmoid(2 h_i / T) for T > 0. At T = 0 the deterministic rule: 1 if h_i > 0, 0 if
        h_i < 0, and on a tie the unit keeps its value (1 if it is +1, else 0).
        """
        temperature = _check_temperature(temperature)
        s = self._check_state(state)
        if not _is_int(unit) or not 0 <= unit < self.n_units:
            raise ValueError(f"unit must be an int in [0, {self.n_units - 1}], got {unit!r}")
        field = s @ self.counts[unit]  # N * h_i, exact
        if temperature == 0.0:
            keep = (s[..., unit] > 0).to(torch.float32)
            return torch.where(field > 0, 1.0, torch.where(field < 0, 0.0, keep))
        return torch.sigmoid(2.0 * field / (self.n_units * temperature))

    def recall(
        self,
        state: torch.Tensor,
        temperature: float = 0.0,
        sweeps: int = 10,
        generator: torch.Generator | None = None,
        return_energies: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Run ``sweeps`` asynchronous sweeps from ``state`` (N,) or (..., N); return the final state (float32).

        Each sweep visits every unit once, in a random order (one order per sweep, shared by
        the batch), and sets it by the heat-bath rule at ``temperature`` (see
        :meth:`update_probability`). With ``return_energies`` also return the energy after
        every single-unit update, shape (sweeps * N + 1, ...), the first row the start's.
        """
        s = self._check_state(state)
        temperature = _check_temperature(temperature)
        sweeps = _check_non_negative_int(sweeps, "sweeps")
        _check_generator(generator, self.device)
        batch_shape = s.shape[:-1]
        temps = torch.tensor([temperature], device=self.device)
        final, energies = _glauber(self.counts, s.reshape(1, -1, self.n_units), temps, sweeps, generator, return_energies)
        final = final.reshape(s.shape)
        if return_energies:
            return final, energies.reshape(energies.shape[0], *batch_shape)
        return final


def _check_non_negative_int(value: int, name: str) -> int:
    if not _is_int(value) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return value


def _glauber(
    counts: torch.Tensor,
    state: torch.Tensor,
    temperatures: torch.Tensor,
    sweeps: int,
    generator: torch.Generator | None,
    track_energy: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Heat-bath dynamics of states (K, B, N), row k at temperatures[k], with shared randomness.

    Every temperature sees the same unit orders and the same uniforms (common random
    numbers): a temperature's trajectory does not depend on which others run beside it,
    and a curve over temperatures is smooth. Loops over units (asynchronous updates must
    be sequential) but updates the K * B states of a step at once.
    """
    n_units = counts.shape[0]
    s = state.clone(memory_format=torch.contiguous_format)  # also materialises an expanded input
    _, batch, _ = s.shape
    t = temperatures.reshape(-1, 1)
    cold = t == 0  # (K, 1): rows updated by the deterministic sign rule
    # 2 h / T = field * 2 / (N T), with field = N h; cold rows get a placeholder factor.
    scale = 2.0 / (n_units * torch.where(cold, torch.ones_like(t), t))
    any_cold, any_hot = bool(cold.any()), bool((~cold).any())
    energies = []
    if track_energy:
        # n_energy = N * E, integer-valued, updated exactly by -delta * field at each step.
        n_energy = -0.5 * ((s @ counts) * s).sum(dim=-1)
        energies.append(n_energy.clone())
    for _ in range(sweeps):
        order = torch.randperm(n_units, generator=generator, device=counts.device)
        uniforms = torch.rand(n_units, batch, generator=generator, device=counts.device)
        for step, i in enumerate(order.tolist()):
            old = s[..., i]  # a view: read it before s[..., i] is overwritten below
            field = s @ counts[i]  # (K, B): N * h_i
            if any_hot:
                new = torch.where(uniforms[step] < torch.sigmoid(field * scale), 1.0, -1.0)
            if any_cold:
                # sign(h), but a tie keeps the current value (the energy is the same either way).
                sign = torch.sign(field)
                new_cold = torch.where(sign == 0, old, sign)
                new = torch.where(cold, new_cold, new) if any_hot else new_cold
            if track_energy:
                n_energy = n_energy - (new - old) * field
                energies.append(n_energy.clone())
            s[..., i] = new
    stacked = torch.stack(energies) / n_units if track_energy else None
    return s, stacked


# --------------------------------------------------------------------------------------
# The chapter's measurement.
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecallAccuracy:
    """Result of :func:`recall_accuracy`: one entry per temperature, as plain floats."""

    temperatures: tuple[float, ...]
    mean_overlap: tuple[float, ...]  # mean over trials of the final overlap with the target pattern
    exact_recall: tuple[float, ...]  # fraction of trials that end exactly on the target (overlap 1)
    # The energy is even, E(-s) = E(s): the mirror image -xi is stored as well as xi, and near
    # the transition a trial ends near either. The signed mean then averages +m and -m towards
    # 0; the mean of |m| measures retrieval of the pattern or its mirror.
    mean_abs_overlap: tuple[float, ...]  # mean over trials of |final overlap|
    abs_overlap_se: tuple[float, ...]  # standard error of mean_abs_overlap over the trials (s / sqrt(n))
    mirror_fraction: tuple[float, ...]  # fraction of trials that end with a negative overlap
    n_units: int
    n_patterns: int
    flip_fraction: float
    n_trials: int
    sweeps: int
    seed: int

    def as_dict(self) -> dict[float, dict[str, float]]:
        """``{T: {"mean_overlap", "exact_recall", "mean_abs_overlap", "abs_overlap_se", "mirror_fraction"}}``."""
        keys = ("mean_overlap", "exact_recall", "mean_abs_overlap", "abs_overlap_se", "mirror_fraction")
        return {
            t: dict(zip(keys, values))
            for t, *values in zip(self.temperatures, *(getattr(self, k) for k in keys))
        }

    def table(self) -> str:
        """A small fixed-width text table (the numbers a figure shows, for nbval to compare)."""
        lines = ["     T  mean overlap  mean |overlap|     SE  exact recall  ends mirrored"]
        rows = zip(self.temperatures, self.mean_overlap, self.mean_abs_overlap, self.abs_overlap_se,
                   self.exact_recall, self.mirror_fraction)
        for t, m, a, se, e, f in rows:
            lines.append(f"{t:6.2f}  {m:12.3f}  {a:14.3f}  {se:5.3f}  {e:12.3f}  {f:13.3f}")
        return "\n".join(lines)


def recall_accuracy(
    n_units: int = 100,
    n_patterns: int = 5,
    flip_fraction: float = 0.2,
    temperatures: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0),
    n_trials: int = 200,
    sweeps: int = 20,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> RecallAccuracy:
    """How well a Hopfield network recalls corrupted patterns, per temperature.

    One network stores ``n_patterns`` random patterns. Trial t starts from pattern
    t mod n_patterns with ``flip_fraction`` of its units flipped and runs ``sweeps`` sweeps
    of heat-bath dynamics. Every temperature sees the same patterns, starts, unit orders
    and uniforms (common random numbers), so the result at one temperature does not depend
    on the others listed, and equals ``HopfieldNetwork.recall`` with the generator in the
    same state. Deterministic for a given ``seed`` and device type (CPU by default, so a
    chapter prints the same numbers with or without a GPU).
    """
    n_units = _check_positive_int(n_units, "n_units")
    n_patterns = _check_positive_int(n_patterns, "n_patterns")
    n_trials = _check_positive_int(n_trials, "n_trials")
    sweeps = _check_non_negative_int(sweeps, "sweeps")
    if isinstance(flip_fraction, bool) or not isinstance(flip_fraction, (int, float)) or not 0.0 <= flip_fraction <= 1.0:
        raise ValueError(f"flip_fraction must be a number in [0, 1], got {flip_fraction!r}")
    if isinstance(temperatures, (str, bytes)) or not isinstance(temperatures, Sequence) or len(temperatures) == 0:
        raise ValueError(f"temperatures must be a non-empty sequence of numbers >= 0, got {temperatures!r}")
    temps = tuple(_check_temperature(t, "temperatures") for t in temperatures)
    if not _is_int(seed):
        raise ValueError(f"seed must be an int, got {seed!r}")
    device = torch.device(device)

    generator = torch.Generator(device=device).manual_seed(seed)
    patterns = random_patterns(n_patterns, n_units, generator, device)
    net = HopfieldNetwork(n_units, device).store(patterns)
    targets = patterns[torch.arange(n_trials, device=device) % n_patterns]  # (n_trials, N)
    starts = corrupt(targets, flip_fraction, generator)
    k = len(temps)
    final, _ = _glauber(
        net.counts,
        starts.expand(k, n_trials, n_units),
        torch.tensor(temps, device=device),
        sweeps,
        generator,
        track_energy=False,
    )
    # s . xi is an integer; averaging it in float64 on the CPU keeps the printed numbers
    # the same on every device (float32 k / N would carry rounding noise into the means).
    dots = (final * targets).sum(dim=-1).cpu().to(torch.float64)  # (K, n_trials)
    return RecallAccuracy(
        temperatures=temps,
        mean_overlap=tuple((dots.sum(dim=-1) / (n_trials * n_units)).tolist()),  # one rounding: 0.2479, not 0.24789999
        exact_recall=tuple((dots == n_units).to(torch.float64).mean(dim=-1).tolist()),
        mean_abs_overlap=tuple((dots.abs().sum(dim=-1) / (n_trials * n_units)).tolist()),
        # One trial has no spread to estimate: its standard error is reported as nan.
        abs_overlap_se=tuple(
            (dots.abs().std(dim=-1) / (n_units * math.sqrt(n_trials))).tolist()
            if n_trials > 1 else [math.nan] * k
        ),
        mirror_fraction=tuple((dots < 0).to(torch.float64).mean(dim=-1).tolist()),
        n_units=n_units,
        n_patterns=n_patterns,
        flip_fraction=float(flip_fraction),
        n_trials=n_trials,
        sweeps=sweeps,
        seed=seed,
    )


# --------------------------------------------------------------------------------------
# The large-N theory of the retrieval temperature (Amit, Gutfreund and Sompolinsky 1987).
# --------------------------------------------------------------------------------------


def _normal_grid(n_points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points z_k on [-10, 10] and weights w_k (summing to 1) with sum_k w_k f(z_k) ~ E f(z), z ~ N(0, 1).

    A uniform grid (the trapezoid rule with Gaussian weights), not Gauss-Hermite nodes: at
    low T the integrands below are nearly steps, which a few hundred Gauss-Hermite nodes
    resolve badly (they put the capacity near 0.14 instead of 0.138), while a grid of
    spacing 0.005 resolves a step of width 1 / (beta sigma) down to T ~ 0.005.
    """
    z = torch.linspace(-10.0, 10.0, n_points, dtype=torch.float64)
    w = torch.exp(-0.5 * z**2)
    return z, w / w.sum()


def ags_retrieval_state(
    alpha: float,
    temperature: float,
    n_points: int = 4001,
    max_iterations: int = 20_000,
    tolerance: float = 1e-12,
) -> tuple[float, float, float]:
    """The replica-symmetric retrieval solution (m, q, r) of the Hopfield model at load alpha and T > 0.

    Amit, Gutfreund and Sompolinsky (1987, ``amit1987statistical``; "AGS") solve the
    Hebbian Hopfield network with P = alpha N random patterns for N -> infinity. In the
    replica-symmetric approximation a state retrieving one pattern has an overlap m with
    it, an Edwards-Anderson order parameter q and a crosstalk variance alpha r from the
    other patterns, tied by (z a standard normal, beta = 1 / T)

        m = E tanh(beta (m + sqrt(alpha r) z)),
        q = E tanh^2(beta (m + sqrt(alpha r) z)),
        r = q / (1 - beta (1 - q))^2.

    The expectations over z use the trapezoid rule on ``n_points`` points of [-10, 10], and
    beta (1 - q) is computed as E[z tanh(beta (m + sigma z))] / sigma (Stein's lemma),
    which stays accurate when tanh is nearly a step (low T). The equations are iterated
    from the perfect-retrieval start m = q = 1 until nothing moves by more than
    ``tolerance``; the result is the retrieval solution if one exists, else m = 0 (the
    iteration falls into the non-retrieval solution, or 1 - beta (1 - q) reaches 0).
    At alpha = 0 this is the Curie-Weiss equation m = tanh(m / T).
    """
    alpha = _check_temperature(alpha, "alpha")
    temperature = _check_temperature(temperature)
    if temperature == 0.0:
        raise ValueError("temperature must be > 0 for ags_retrieval_state")
    n_points = _check_positive_int(n_points, "n_points")
    z, w = _normal_grid(n_points)
    beta = 1.0 / temperature
    m, q, r = 1.0, 1.0, 1.0
    for _ in range(max_iterations):
        sigma = math.sqrt(alpha * r)
        tanh = torch.tanh(beta * (m + sigma * z))
        m_new = float((w * tanh).sum())
        q_new = float((w * tanh**2).sum())
        if sigma > 0:
            susceptibility = float((w * z * tanh).sum()) / sigma  # beta (1 - q), by Stein's lemma
        else:
            susceptibility = beta * (1.0 - q_new)
        if susceptibility >= 1.0:  # r would be infinite: no retrieval state here
            return 0.0, q_new, math.inf
        r_new = q_new / (1.0 - susceptibility) ** 2
        if m_new < 1e-9:
            return 0.0, q_new, r_new
        moved = max(abs(m_new - m), abs(q_new - q), abs(r_new - r))
        m, q, r = m_new, q_new, r_new
        if moved < tolerance:
            break
    return m, q, r


def ags_retrieval_temperature(alpha: float, n_points: int = 4001, resolution: float = 1e-4) -> float:
    """T_M(alpha): the highest temperature at which the AGS retrieval solution (m > 0) exists.

    Found by bisection in T on :func:`ags_retrieval_state` (to ``resolution``). At
    alpha = 0 it is T_c = 1 (the Curie-Weiss transition, second order); for small alpha
    it behaves like 1 - 1.95 sqrt(alpha); it reaches 0 at the capacity alpha_c ~ 0.138
    (AGS, ``amit1987statistical``). Above alpha = 0.051 and T > 0, and for T between a
    lower line T_c(alpha) and T_M(alpha), the retrieval states are only metastable (local
    minima of the free energy, not the global one): T_M is where they stop existing, a
    first-order (discontinuous) jump of m for alpha > 0. Returns 0 when no retrieval
    solution exists at any T >= 0.005 (the grid's limit).
    """
    alpha = _check_temperature(alpha, "alpha")
    if alpha == 0.0:
        return 1.0

    def retrieves(t: float) -> bool:
        return ags_retrieval_state(alpha, t, n_points)[0] > 1e-3

    low, high = max(resolution, 0.005), 1.0
    if not retrieves(low):
        return 0.0
    while high - low > resolution:
        middle = (low + high) / 2
        low, high = (middle, high) if retrieves(middle) else (low, middle)
    return low
