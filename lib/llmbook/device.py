"""Where tensors live and how runs are made repeatable.

``pick_device`` prefers CUDA, then Apple's MPS, then the CPU; the environment variable
``LLMBOOK_DEVICE`` overrides the choice (e.g. ``LLMBOOK_DEVICE=cpu`` on a GPU machine).
``seed_everything`` seeds Python, NumPy and PyTorch together so chapters reproduce.
``use_reference_cpu_kernels`` makes an x86-64 CPU compute what the committed chapter
outputs were computed with, so that nbval compares outputs rather than CPUs.
"""

from __future__ import annotations

import os
import platform
import random

import numpy as np
import torch

ENV_VAR = "LLMBOOK_DEVICE"
_KNOWN_TYPES = ("cpu", "cuda", "mps")

# PyTorch, oneDNN, fbgemm, MKL, OpenBLAS and NumPy each compile their CPU kernels for
# several x86 vector units and pick one per process, from the CPU or from these variables.
# Kernels for different units sum in different orders: on a CPU with AVX-512, logits change
# in their last bits, a sampled token can flip, and a bfloat16 matmul rounds differently
# (and runs at another speed). The committed chapter outputs were made with the AVX2
# kernels, which every x86-64 CPU of the last decade runs; these settings select them.
REFERENCE_CPU_KERNELS: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "avx2",  # PyTorch's own kernels: sums, softmax, exp
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN: PyTorch's bfloat16 and float16 matmuls
    "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2",  # fbgemm: PyTorch's int8 (quantized) matmuls
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",  # MKL: PyTorch's float32 matmuls (on Intel CPUs)
    "OPENBLAS_CORETYPE": "Haswell",  # NumPy's BLAS and LAPACK (least squares, dot)
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",  # NumPy's own loops
}
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def pick_device(preferred: str | torch.device | None = None) -> torch.device:
    """Return the device to compute on: ``preferred``, else ``$LLMBOOK_DEVICE``, else cuda > mps > cpu.

    An explicit request for a device this machine lacks raises ``ValueError`` rather than
    silently falling back, so a reader who asked for a GPU knows they did not get one.
    """
    requested = preferred if preferred is not None else os.environ.get(ENV_VAR) or None
    if requested is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError) as err:
        source = "preferred" if preferred is not None else ENV_VAR
        raise ValueError(f"{source}={requested!r} is not a device; use one of {_KNOWN_TYPES} (optionally 'cuda:N')") from err
    if device.type not in _KNOWN_TYPES:
        raise ValueError(f"device type {device.type!r} is not supported; use one of {_KNOWN_TYPES}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} was requested but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device index must be in [0, {torch.cuda.device_count() - 1}], got {device.index}")
    if device.type == "mps" and not _mps_available():
        raise ValueError("device 'mps' was requested but MPS is not available on this machine")
    return device


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device | str | None = None) -> torch.dtype:
    """Turn ``'bf16'``/``'float32'``/``torch.float16``/``None`` into a ``torch.dtype``.

    ``None`` means float32, the exact reference everywhere. Half precisions on the CPU are
    allowed for bfloat16 (supported by PyTorch's CPU kernels) and refused for float16,
    whose CPU matmuls are slow and not what a reader wants by accident.
    """
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        dtype = _DTYPES[dtype]
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
    if device is not None and torch.device(device).type == "cpu" and dtype == torch.float16:
        raise ValueError("dtype float16 is not supported on the CPU; use float32 or bfloat16 there")
    return dtype


def _x86_with_avx2() -> bool:
    """Whether this is a Linux x86-64 CPU with AVX2 (OpenBLAS's Haswell kernels need it)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return " avx2" in flags


def use_reference_cpu_kernels() -> dict[str, str]:
    """Ask for the CPU kernels the book's committed outputs were computed with.

    Sets each variable of ``REFERENCE_CPU_KERNELS`` that is not already set (one that is
    set is left alone) and returns the values in effect. Does nothing, and returns ``{}``,
    except on Linux x86-64 with AVX2. The libraries read these variables once, when they
    load or at their first operation, so the book's commands call this before starting a
    notebook kernel or export the variables before starting Python (scripts/_setup.sh).
    """
    if not _x86_with_avx2():
        return {}
    for name, value in REFERENCE_CPU_KERNELS.items():
        os.environ.setdefault(name, value)
    return {name: os.environ[name] for name in REFERENCE_CPU_KERNELS}


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python's ``random``, NumPy and PyTorch (all devices); return a CPU ``torch.Generator`` with that seed."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {type(seed).__name__}")
    if not 0 <= int(seed) < 2**63:
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def describe(device: torch.device | str | None = None) -> str:
    """One line naming the device and software, for the top of a chapter."""
    device = pick_device(device) if not isinstance(device, torch.device) else device
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        hardware = torch.cuda.get_device_name(index)
    elif device.type == "mps":
        hardware = f"Apple GPU ({platform.machine()})"
    else:
        hardware = f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    return f"device: {device.type} ({hardware}) | torch {torch.__version__}"
