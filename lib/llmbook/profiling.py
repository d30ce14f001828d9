"""Where the time of a forward pass goes, counted: FLOPs and bytes moved per component.

The chapter *Inference time* (planned) explains this module; this part is the analytic count
that the chapter's measurements are placed against (a roofline: time >= max(FLOPs / peak FLOP/s,
bytes / memory bandwidth)).

For a Llama-family decoder with hidden size D, L layers, H query heads and K key/value heads of
size d, MLP width I and vocabulary V, a forward pass over T new tokens of B rows, after S_past
cached tokens (S = S_past + T keys per query), costs in multiply-adds x 2 = FLOPs:

- attention projections: 2 B T L (D H d + 2 D K d + H d D)   (q, k, v, o)
- attention scores:      2 B T L H S d x 2                    (Q K^T and softmax(.) V, dense: the
  causal mask is applied, not skipped, as PyTorch's math attention computes it)
- MLP:                   2 B T L (3 D I)                      (gate, up, down)
- output projection:     2 B T_out D V                        (T_out = T, or 1 for the last position)

Elementwise work (RMSNorm, RoPE, SiLU, softmax, residual adds) is O(B T D) and left out, as
``torch.utils.flop_counter.FlopCounterMode`` leaves it out. Bytes: every weight matrix is read
once per forward pass whatever B and T are (that is why decoding one token at a time is
memory-bound), the embedding only for the B T rows it looks up; the KV cache reads S and writes
T positions of 2 L K d values per row.

Measured counterparts: :func:`machine_limits` (a STREAM-like copy for the memory bandwidth and a
large matmul for the peak FLOP/s of this machine) and :func:`component_times` (``torch.profiler``
with a labelled range around each component's modules).
"""

from __future__ import annotations

import contextlib
import copy
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from llmbook.model import MLP, Attention, CausalLM, ModelConfig, RMSNorm

__all__ = ["ForwardCost", "forward_cost", "MachineLimits", "machine_limits", "component_times", "quantize_int8",
           "interleaved_times"]

COMPONENTS = ("embedding", "attention projections", "attention scores", "MLP", "norms", "output projection")


@dataclass(frozen=True)
class ForwardCost:
    """FLOPs and bytes of one forward pass, per component (see the module docstring).

    ``flops[c]``: floating-point operations (2 per multiply-add) of component c;
    ``weight_bytes[c]``: bytes of parameters c reads; ``kv_read_bytes``/``kv_write_bytes``: the
    KV cache traffic of the attention; ``activation_bytes`` is not modelled.
    """

    flops: dict[str, int]
    weight_bytes: dict[str, int]
    kv_read_bytes: int
    kv_write_bytes: int

    @property
    def total_flops(self) -> int:
        return sum(self.flops.values())

    @property
    def total_bytes(self) -> int:
        return sum(self.weight_bytes.values()) + self.kv_read_bytes + self.kv_write_bytes

    @property
    def arithmetic_intensity(self) -> float:
        """FLOPs per byte moved: below the machine's peak FLOP/s / bandwidth, the pass is memory-bound."""
        return self.total_flops / self.total_bytes


def _check(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def forward_cost(config: ModelConfig, *, new_tokens: int, past_tokens: int = 0, batch: int = 1,
                 logits: str = "all", bytes_per_value: int = 4, kv_bytes_per_value: int | None = None
                 ) -> ForwardCost:
    """The analytic cost of one forward pass of ``config``'s model.

    Args:
        new_tokens: T, tokens per row this pass reads (the prompt for prefill, 1 per decode step).
        past_tokens: S_past, tokens already in the KV cache.
        batch: B, rows.
        logits: ``"all"`` (a logit row per position, as ``model(ids)``) or ``"last"`` (only the last
            position, as generation's prefill asks with ``last_only=True``).
        bytes_per_value: size of a weight (4 for float32, 2 for bfloat16/float16, 1 for int8).
        kv_bytes_per_value: size of a cached key/value (default: ``bytes_per_value``).
    Raises ``ValueError`` for a non-ModelConfig, counts below their minimum or an unknown ``logits``.
    """
    if not isinstance(config, ModelConfig):
        raise ValueError(f"config must be a ModelConfig, got {type(config).__name__}")
    t, s_past, b = _check("new_tokens", new_tokens, 1), _check("past_tokens", past_tokens, 0), _check("batch", batch, 1)
    _check("bytes_per_value", bytes_per_value, 1)
    kv_size = bytes_per_value if kv_bytes_per_value is None else _check("kv_bytes_per_value", kv_bytes_per_value, 1)
    if logits not in ("all", "last"):
        raise ValueError(f"logits must be 'all' or 'last', got {logits!r}")
    c = config
    d_model, layers, heads, kv_heads, d = c.hidden_size, c.num_hidden_layers, c.num_attention_heads, \
        c.num_key_value_heads, c.head_dim
    s = s_past + t
    t_out = t if logits == "all" else 1
    proj_params = d_model * heads * d + 2 * d_model * kv_heads * d + heads * d * d_model
    mlp_params = 3 * d_model * c.intermediate_size
    flops = {
        "embedding": 0,
        "attention projections": 2 * b * t * layers * proj_params,
        "attention scores": 2 * 2 * b * t * layers * heads * s * d,
        "MLP": 2 * b * t * layers * mlp_params,
        "norms": 0,
        "output projection": 2 * b * t_out * d_model * c.vocab_size,
    }
    weight_bytes = {
        "embedding": b * t * d_model * bytes_per_value,  # the looked-up rows only
        "attention projections": layers * proj_params * bytes_per_value,
        "attention scores": 0,
        "MLP": layers * mlp_params * bytes_per_value,
        "norms": (2 * layers + 1) * d_model * bytes_per_value,
        "output projection": d_model * c.vocab_size * bytes_per_value,  # tied or not, read whole
    }
    per_position = 2 * layers * kv_heads * d * kv_size
    return ForwardCost(flops=flops, weight_bytes=weight_bytes, kv_read_bytes=b * s * per_position,
                       kv_write_bytes=b * t * per_position)


@dataclass(frozen=True)
class MachineLimits:
    """What this device can do at most, measured: bytes/s moved by a large copy (read + write) and
    FLOP/s of a large square matmul, each the best of ``repeats`` runs."""

    device: str
    dtype: str
    bandwidth_bytes_per_s: float
    peak_flops_per_s: float


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_time(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    fn()  # warm-up: allocation, kernel selection
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def machine_limits(device: torch.device | str = "cpu", *, copy_mib: int = 256, matmul_n: int = 2048,
                   dtype: torch.dtype = torch.float32, repeats: int = 5) -> MachineLimits:
    """Measure this device's memory bandwidth (``b.copy_(a)`` of ``copy_mib`` MiB: 2x that many bytes
    move) and peak matmul FLOP/s (``matmul_n`` squared matrices: 2 n^3 FLOPs), best of ``repeats``."""
    device = torch.device(device)
    for name, v, low in (("copy_mib", copy_mib, 1), ("matmul_n", matmul_n, 16), ("repeats", repeats, 1)):
        _check(name, v, low)
    n_values = copy_mib * 2**20 // torch.empty(0, dtype=dtype).element_size()
    a = torch.ones(n_values, dtype=dtype, device=device)
    b = torch.empty_like(a)
    copy_s = _best_time(lambda: b.copy_(a), device, repeats)
    x = torch.randn(matmul_n, matmul_n, device=device).to(dtype)
    y = torch.randn(matmul_n, matmul_n, device=device).to(dtype)
    mm_s = _best_time(lambda: x @ y, device, repeats)
    return MachineLimits(device=str(device), dtype=str(dtype).replace("torch.", ""),
                         bandwidth_bytes_per_s=2 * a.numel() * a.element_size() / copy_s,
                         peak_flops_per_s=2 * matmul_n**3 / mm_s)


def _component(name: str, module: nn.Module, model: CausalLM) -> str | None:
    if module is model.lm_head:
        return "output projection"
    if isinstance(module, nn.Embedding):
        return "embedding"
    if name.rsplit(".", 1)[-1] in ("q_proj", "k_proj", "v_proj", "o_proj"):
        return "attention projections"
    if isinstance(module, Attention):
        return "attention"  # everything in it: the projections, RoPE, the scores
    if isinstance(module, MLP):
        return "MLP"
    if isinstance(module, RMSNorm):
        return "norms"
    return None


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Send the process's stderr (file descriptor 2) to /dev/null for the block.

    PyTorch's Kineto profiler prints ``USDT: ... profiler_start`` / ``STAGE: ...`` lines from C++ at
    every start and stop of a profile, whatever ``KINETO_LOG_LEVEL`` says; they are not warnings and
    cannot be switched off from Python. Python exceptions are unaffected (they are raised, not
    printed), and the caller's first, unprofiled call runs outside this block, so a real error
    message still reaches stderr.
    """
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no file descriptor 2 (an embedded interpreter): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def component_times(model: CausalLM, fn: Callable[[], object], *, repeats: int = 3) -> dict[str, float]:
    """Seconds per call of ``fn`` (which runs ``model``) spent in each component, by ``torch.profiler``.

    Each component's modules run inside a ``torch.profiler.record_function`` range named after the
    component; the result is the median over ``repeats`` profiled calls of each range's total time,
    with ``"attention scores and RoPE"`` = attention minus its projections, ``"total"`` the wall
    time of the profiled call and ``"other"`` what no component accounts for (Python, sampling,
    the profiler's own overhead).
    """
    if not isinstance(model, CausalLM):
        raise ValueError(f"model must be a llmbook CausalLM, got {type(model).__name__}")
    _check("repeats", repeats, 1)
    labelled = [(m, label) for name, m in model.named_modules() if (label := _component(name, m, model))]
    handles, stack = [], []

    def enter(label: str):
        def hook(module, args):
            ctx = torch.profiler.record_function(label)
            ctx.__enter__()
            stack.append(ctx)
        return hook

    def leave(module, args, output):
        stack.pop().__exit__(None, None, None)

    for module, label in labelled:
        handles.append(module.register_forward_pre_hook(enter(label)))
        handles.append(module.register_forward_hook(leave))
    activities = [torch.profiler.ProfilerActivity.CPU]
    if model.device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    runs: list[dict[str, float]] = []
    try:
        fn()  # warm-up
        for _ in range(repeats):
            with _quiet_stderr(), torch.profiler.profile(activities=activities) as prof:
                start = time.perf_counter()
                fn()
                _sync(model.device)
                wall = time.perf_counter() - start
            totals = {e.key: e.cpu_time_total / 1e6 for e in prof.key_averages()
                      if e.key in {label for _, label in labelled}}
            if model.device.type == "cuda":  # the device's own time where the work runs there
                totals = {e.key: max(totals.get(e.key, 0.0), e.device_time_total / 1e6)
                          for e in prof.key_averages() if e.key in totals}
            row = {label: totals.get(label, 0.0) for label in
                   ("embedding", "attention projections", "attention", "MLP", "norms", "output projection")}
            row["attention scores and RoPE"] = max(0.0, row.pop("attention") - row["attention projections"])
            row["other"] = max(0.0, wall - sum(row.values()))
            row["total"] = wall
            runs.append(row)
    finally:
        for h in handles:
            h.remove()
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def quantize_int8(model: CausalLM) -> CausalLM:
    """A CPU copy of ``model`` with every ``nn.Linear`` (projections, MLP, output head) in int8.

    PyTorch's dynamic quantization (``torch.ao.quantization.quantize_dynamic``): weights stored as
    int8 with one scale per matrix; at each call the activations are quantized to int8 on the fly,
    multiplied by fbgemm's int8 kernels (CPU only) and the result turned back into float32. The
    embedding, norms and attention scores stay float32; a tied output head gets its own int8 copy.
    ``model`` itself is not changed.
    """
    if not isinstance(model, CausalLM):
        raise ValueError(f"model must be a llmbook CausalLM, got {type(model).__name__}")
    if model.dtype != torch.float32:
        raise ValueError(f"model must be float32 to quantize, got {model.dtype}")
    quantized = copy.deepcopy(model).to("cpu")
    with warnings.catch_warnings():
        # torch >= 2.9 marks torch.ao.quantization deprecated (its successor, torchao, is a separate
        # package); the eager-mode API still works and is the one built into torch, so the notice is
        # silenced here and said in the chapter instead.
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor", category=UserWarning)
        torch.ao.quantization.quantize_dynamic(quantized, {nn.Linear}, dtype=torch.qint8, inplace=True)
    return quantized


def interleaved_times(fns: dict, *, rounds: int = 5, device: torch.device | str = "cpu", seed: int = 0
                      ) -> dict[object, list[float]]:
    """Seconds per call of every function in ``fns``: one list per key, one time per round.

    Each function is called once to warm up; then every round calls every function once, in a
    fresh random order (seeded). On a machine whose load comes and goes, a busy moment then slows
    every configuration alike instead of one configuration's whole block of repeats, so ratios
    between configurations stay fair; take the minimum over rounds for a configuration's own cost
    (load only adds time). CUDA work is synchronized around each call.
    """
    import random

    if not isinstance(fns, dict) or not fns or not all(callable(f) for f in fns.values()):
        raise ValueError("fns must be a non-empty dict of callables")
    _check("rounds", rounds, 1)
    device = torch.device(device)
    for fn in fns.values():
        fn()
    _sync(device)
    keys, rng = list(fns), random.Random(seed)
    times: dict[object, list[float]] = {k: [] for k in keys}
    for _ in range(rounds):
        for key in rng.sample(keys, len(keys)):
            _sync(device)
            start = time.perf_counter()
            fns[key]()
            _sync(device)
            times[key].append(time.perf_counter() - start)
    return times
