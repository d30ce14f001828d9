import random

import numpy as np
import pytest
import torch

from llmbook.device import describe, pick_device, resolve_dtype, seed_everything


def test_default_pick_matches_availability(monkeypatch):
    monkeypatch.delenv("LLMBOOK_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert pick_device().type == expected


def test_environment_variable_overrides(monkeypatch):
    monkeypatch.setenv("LLMBOOK_DEVICE", "cpu")
    assert pick_device() == torch.device("cpu")
    monkeypatch.setenv("LLMBOOK_DEVICE", "tpu")
    with pytest.raises(ValueError, match="LLMBOOK_DEVICE"):
        pick_device()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_unavailable_cuda_is_an_error_not_a_fallback():
    with pytest.raises(ValueError, match="CUDA is not available"):
        pick_device("cuda")


def test_seeding_repeats_python_numpy_and_torch():
    def draw():
        gen = seed_everything(123)
        return random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=gen).item()

    assert draw() == draw()


@pytest.mark.parametrize("bad", [1.5, "7", True, -1])
def test_bad_seed(bad):
    with pytest.raises(ValueError, match="seed"):
        seed_everything(bad)


def test_dtypes():
    assert resolve_dtype(None) is torch.float32
    assert resolve_dtype("bf16", "cpu") is torch.bfloat16
    with pytest.raises(ValueError, match="float16 is not supported on the CPU"):
        resolve_dtype("float16", "cpu")
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype("int8")


def test_describe_is_one_line():
    line = describe(torch.device("cpu"))
    assert line.startswith("device: cpu") and "\n" not in line and torch.__version__ in line


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_describe_names_the_gpu():
    assert torch.cuda.get_device_name(0) in describe(torch.device("cuda"))
