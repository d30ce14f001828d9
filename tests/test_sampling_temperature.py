import math

import pytest
import torch

from llmbook.sampling import entropy, temperature_softmax, total_variation


def test_temperature_one_is_plain_softmax():
    logits = torch.tensor([[2.0, 1.0, -1.0, 0.5]])
    assert torch.allclose(temperature_softmax(logits, 1.0), torch.softmax(logits, -1))


def test_limits_zero_and_infinity():
    logits = torch.tensor([3.0, 1.0, 3.0, -2.0])
    assert torch.equal(temperature_softmax(logits, 0.0), torch.tensor([0.5, 0.0, 0.5, 0.0]))
    hot = temperature_softmax(logits, 1e6)
    assert torch.allclose(hot, torch.full((4,), 0.25), atol=1e-5)


def test_entropy_grows_with_temperature():
    logits = torch.randn(50, generator=torch.Generator().manual_seed(0)) * 3
    temps = [0.1, 0.5, 1.0, 2.0, 5.0]
    values = [entropy(temperature_softmax(logits, t)).item() for t in temps]
    assert all(a < b for a, b in zip(values, values[1:]))
    assert values[-1] < math.log(50)


def test_entropy_of_one_hot_and_uniform():
    assert entropy(torch.tensor([0.0, 1.0, 0.0])).item() == 0.0
    assert entropy(torch.full((8,), 1 / 8)).item() == pytest.approx(math.log(8))


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "1"])
def test_bad_temperature_names_argument(bad):
    with pytest.raises(ValueError, match="temperature"):
        temperature_softmax(torch.zeros(3), bad)


def test_nan_logits_raise():
    with pytest.raises(ValueError, match="NaN"):
        temperature_softmax(torch.tensor([0.0, float("nan")]), 1.0)


def test_total_variation():
    p = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    q = torch.tensor([[0.5, 0.25, 0.25], [0.0, 0.0, 1.0]])
    assert torch.allclose(total_variation(p, q), torch.tensor([0.25, 1.0]))
    assert torch.equal(total_variation(p, q), total_variation(q, p))
    assert torch.equal(total_variation(p, p), torch.zeros(2))


@pytest.mark.parametrize("p, q, match", [
    (torch.ones(3) / 3, torch.ones(4) / 4, "same shape"),
    (torch.tensor([1.5, -0.5]), torch.tensor([0.5, 0.5]), "p must be non-negative"),
    (torch.tensor([0.5, 0.5]), torch.tensor([1, 0]), "q must be a floating-point"),
])
def test_total_variation_bad_input(p, q, match):
    with pytest.raises(ValueError, match=match):
        total_variation(p, q)
