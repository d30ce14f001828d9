import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from llmbook.device import (
    REFERENCE_CPU_KERNELS,
    describe,
    pick_device,
    resolve_dtype,
    seed_everything,
    use_reference_cpu_kernels,
)


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


_KERNELS = """
import numpy, torch
from numpy._core._multiarray_umath import __cpu_features__ as numpy_features
print(torch.backends.cpu.get_cpu_capability(), numpy_features["X86_V4"])
"""


def _kernels(env: dict[str, str]) -> tuple[str, bool]:
    """PyTorch's CPU kernels and whether NumPy uses its AVX-512 loops, in a fresh process."""
    run = subprocess.run([sys.executable, "-c", _KERNELS], env=env, capture_output=True, text=True, check=True)
    torch_kernels, numpy_avx512 = run.stdout.split()
    return torch_kernels, numpy_avx512 == "True"


def test_reference_cpu_kernels_reach_notebook_kernels():
    """nbval reproduces the committed outputs only with the kernels they were made with.

    The root conftest.py sets the variables in this process, so every notebook kernel nbval starts
    inherits them; a process started like one here must use the AVX2 kernels.
    """
    if not use_reference_cpu_kernels():
        pytest.skip("not Linux x86-64 with AVX2: the book's outputs come from other kernels here")
    unpinned = {k: v for k, v in os.environ.items() if k not in REFERENCE_CPU_KERNELS}
    natural = _kernels(unpinned)
    assert natural[0] in ("AVX2", "AVX512")
    assert _kernels(dict(os.environ)) == ("AVX2", False)
    for name, value in REFERENCE_CPU_KERNELS.items():
        assert os.environ[name] == value, f"{name} is set to something else in this environment"


def test_reference_cpu_kernels_leave_a_choice_alone(monkeypatch):
    if not use_reference_cpu_kernels():
        pytest.skip("not Linux x86-64 with AVX2: nothing is set here")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")
    monkeypatch.delenv("OPENBLAS_CORETYPE")
    chosen = use_reference_cpu_kernels()
    assert chosen["ATEN_CPU_CAPABILITY"] == "default"
    assert chosen["OPENBLAS_CORETYPE"] == REFERENCE_CPU_KERNELS["OPENBLAS_CORETYPE"]
