"""Numerical extremes: finite logits in any float dtype, at any temperature the API accepts,
never give NaN probabilities or a raw torch error, and the ordinary path stays transformers'.

The failure these guard against: ``logits / temperature`` overflows (a tiny temperature, or
float16's 65504 ceiling), the row's maximum becomes inf, and softmax computes inf - inf = NaN.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmbook.sampling import (
    Temperature,
    apply_processors,
    build_processors,
    entropy,
    nucleus_size,
    probabilities,
    row_generators,
    sample,
    temperature_softmax,
)

NEG_INF = float("-inf")
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_tiny_temperature_is_one_hot_on_the_argmax():
    # 30 / 1e-39 overflows float32: the plain softmax is NaN everywhere.
    logits = torch.tensor([12.0, 30.0, -5.0, 29.5])
    one_hot = torch.tensor([0.0, 1.0, 0.0, 0.0])
    assert torch.equal(probabilities(logits, temperature=1e-39), one_hot)
    assert torch.equal(temperature_softmax(logits, 1e-39), one_hot)
    assert torch.equal(probabilities(logits, temperature=1e-39, top_k=2, top_p=0.5, min_p=0.1), one_hot)
    assert sample(logits, temperature=1e-39).item() == 1
    assert nucleus_size(logits, 0.9, temperature=1e-39).item() == 1


def test_all_negative_logits_at_a_tiny_temperature():
    # Every logit / T overflows to -inf: without the shift the whole row would be masked.
    logits = torch.tensor([[-3.0, -1.0, -2.0], [-1.0, -1.0, -5.0]], dtype=torch.float64)
    probs = probabilities(logits, temperature=1e-320)
    assert torch.equal(probs, torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.5, 0.0]], dtype=torch.float64))
    assert torch.equal(temperature_softmax(logits, 1e-320), probs)


def test_float16_logits_that_overflow_when_divided():
    # 39990 is not a float16 number: it rounds to 40000, so the first two tokens tie.
    tied = torch.tensor([40000, 39990, 0], dtype=torch.float16)
    assert tied[1].item() == 40000.0
    probs = probabilities(tied, temperature=0.5)
    assert probs.dtype == torch.float16
    assert probs.tolist() == [0.5, 0.5, 0.0]
    assert sample(tied, temperature=0.5).item() in (0, 1)
    # 39936 is the next float16 below 40000: a gap of 128 at T = 0.5, so all the mass is on token 0.
    logits = torch.tensor([40000, 39936, 0], dtype=torch.float16)
    assert probabilities(logits, temperature=0.5).tolist() == [1.0, 0.0, 0.0]
    assert sample(logits, temperature=0.5, top_p=0.9, min_p=0.1).item() == 0
    assert Temperature(0.5)(logits).tolist() == [0.0, -128.0, float("-inf")]
    # At T = 100 nothing overflows: the ordinary path, the plain float16 computation bit for bit.
    assert torch.equal(probabilities(logits, temperature=100.0), torch.softmax(logits / 100.0, -1))


def test_huge_temperature_with_masked_tokens():
    # 1e300 rounds to inf in float32, and -inf / inf is NaN: the shift path handles it.
    logits = torch.tensor([[NEG_INF, 1.0, 2.0]])
    probs = probabilities(logits, temperature=1e300)
    assert probs.tolist() == [[0.0, 0.5, 0.5]]
    assert torch.equal(temperature_softmax(logits, 1e300), probs)


def test_only_the_overflowing_row_leaves_the_ordinary_path():
    transformers_lp = pytest.importorskip("transformers.generation.logits_process")
    logits = torch.tensor([[1.0, 2.0, 0.5], [3e38, 1.0, -3e38]])
    warped = transformers_lp.TemperatureLogitsWarper(0.5)(torch.zeros(2, 1, dtype=torch.long), logits)
    assert torch.isinf(warped[1, 0])  # transformers' row 1 is inf, its softmax NaN
    ours = Temperature(0.5)(logits)
    assert torch.equal(ours[0], warped[0])  # row 0: bit-identical to transformers
    assert ours[1].tolist() == [0.0, NEG_INF, NEG_INF]  # row 1: shifted by its max, then divided
    probs = probabilities(logits, temperature=0.5)
    assert torch.equal(probs[0], warped[0].softmax(-1))
    assert probs[1].tolist() == [1.0, 0.0, 0.0]


# --------------------------------------------------------------------------------------
# Property-based: every public function, every float dtype, any accepted temperature.
# --------------------------------------------------------------------------------------


@st.composite
def finite_logits(draw) -> torch.Tensor:
    """(batch, vocab) finite logits of a random float dtype, up to the dtype's largest values,
    sometimes with -inf holes (never a whole row)."""
    dtype = draw(st.sampled_from(DTYPES))
    big = torch.finfo(dtype).max
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 30)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["normal", "huge", "ties", "extreme", "negative", "near_max"]))
    if kind == "normal":
        x = rng.normal(0.0, draw(st.sampled_from([1e-30, 0.01, 1.0, 30.0, 1e3, 3e4])), shape)
    elif kind == "huge":
        x = rng.uniform(-1.0, 1.0, shape) * big
    elif kind == "ties":
        x = rng.choice(np.array([-2.0, 0.0, 0.5, 3.0])[: draw(st.integers(1, 4))], shape) * draw(st.sampled_from([1.0, 1e4]))
    elif kind == "extreme":
        x = rng.choice(np.array([-big, -1.0, 0.0, 1.0, big]), shape)
    elif kind == "negative":
        # All negative: at a small temperature every logit overflows towards -inf.
        x = -np.abs(rng.normal(0.0, 5.0, shape)) - draw(st.sampled_from([1e-3, 1.0, 1e4]))
    else:
        x = big - np.abs(rng.normal(0.0, big * 1e-2, shape))
    x = torch.tensor(np.clip(x, -big, big), dtype=torch.float64).to(dtype)
    if draw(st.booleans()):
        holes = torch.tensor(rng.random(shape) < 0.3)
        holes[:, int(rng.integers(shape[-1]))] = False
        x = x.masked_fill(holes, NEG_INF)
    assert not torch.isnan(x).any() and not (x == float("inf")).any()
    return x


temperatures = st.one_of(
    st.sampled_from([0.0, 5e-324, 1e-300, 1e-45, 1e-39, 1e-20, 1e-8, 1e-3, 0.3, 1.0, 2.0, 1e4, 1e30, 1e300, 1.7e308]),
    st.floats(min_value=0.0, max_value=1e308, exclude_min=True),
)
filters = st.tuples(
    st.one_of(st.none(), st.integers(1, 10)),
    st.one_of(st.none(), st.sampled_from([1e-9, 0.1, 0.5, 0.9, 1.0])),
    st.one_of(st.none(), st.sampled_from([0.0, 0.05, 0.5, 1.0])),
)


def sum_tolerance(dtype: torch.dtype) -> float:
    # Each probability is rounded once to the dtype (relative error eps / 2), so the sum is off
    # by at most ~eps; twice that leaves room for the softmax's own rounding.
    return 2 * torch.finfo(dtype).eps


def assert_distribution(probs: torch.Tensor, logits: torch.Tensor, temperature: float) -> None:
    assert probs.dtype == logits.dtype and probs.shape == logits.shape
    assert bool(torch.isfinite(probs).all()), f"non-finite probabilities {probs}"
    assert bool((probs >= 0).all())
    sums = probs.double().sum(-1)
    assert bool(((sums - 1).abs() <= sum_tolerance(probs.dtype)).all()), f"sums {sums.tolist()}"
    # The argmax survives: a token with the largest logit has the largest probability. "Largest"
    # after the division by T, in the dtype: float16 1234.7 and 1235.3 both round to 1235, and
    # then top-p may keep either (as transformers' warpers do).
    scaled = Temperature(temperature)(logits)
    is_top = scaled == scaled.amax(-1, keepdim=True)
    top_p = probs.masked_fill(~is_top, -1).amax(-1)
    assert torch.equal(top_p, probs.amax(-1)), f"the largest logit lost its place: {probs}"


@SETTINGS
@given(finite_logits(), temperatures, filters)
def test_probabilities_and_sample_are_finite_for_finite_logits(logits, temperature, chain):
    top_k, top_p, min_p = chain
    kwargs = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    probs = probabilities(logits, **kwargs)
    assert_distribution(probs, logits, temperature)
    # The processor chain gives the very distribution the fused path gives.
    chained = apply_processors(logits, build_processors(temperature, top_k, top_p, min_p))
    assert not torch.isnan(chained).any() and bool(torch.isfinite(chained.amax(-1)).all())
    assert torch.equal(chained.softmax(-1), probs)
    for generator in (torch.Generator().manual_seed(0), row_generators(1, logits.shape[0])):
        token = sample(logits, **kwargs, generator=generator)
        assert bool((probs.gather(-1, token[:, None]) > 0).all()), f"drew a token of probability 0: {token}"
    kept = nucleus_size(logits, top_p or 0.9, temperature)
    assert bool(((kept >= 1) & (kept <= logits.shape[-1])).all())


@SETTINGS
@given(finite_logits(), temperatures)
def test_temperature_softmax_and_entropy_are_finite(logits, temperature):
    probs = temperature_softmax(logits, temperature)
    assert_distribution(probs, logits, temperature)
    h = entropy(probs).double()
    assert bool(torch.isfinite(h).all())
    # Entropy lies in [0, log n] up to the dtype's rounding of the probabilities.
    slack = 4 * torch.finfo(logits.dtype).eps * math.log(logits.shape[-1] + 1) + 1e-12
    n_finite = (logits > NEG_INF).sum(-1).double()
    assert bool((h >= -slack).all()) and bool((h <= n_finite.log() + slack).all())
