"""Per-step sampling time: llmbook.sampling.sample vs transformers' logits warpers + multinomial.

Target: llmbook >= 1.0x transformers (ratio = transformers_time / llmbook_time, > 1 means
llmbook is faster) on a 131072-token vocabulary, batch 1 and 8. Both sides run in this
process with the same torch thread count, are warmed up, and are timed as the median of
repeated steps. Not a test: it prints a table and writes benchmarks/results/sampling.json.

    PYTHONPATH=lib python benchmarks/bench_sampling.py
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import transformers
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

import llmbook
from llmbook.sampling import nucleus_size, sample

VOCAB = 131072
BATCHES = (1, 8)
WARMUP, REPEATS = 5, 31
CONFIGS = {
    "temperature+top_p": dict(temperature=0.7, top_p=0.9),
    "temperature+top_k": dict(temperature=0.7, top_k=50),
    "min_p": dict(min_p=0.05),
    "temperature+top_k+top_p+min_p": dict(temperature=0.7, top_k=50, top_p=0.9, min_p=0.05),
}


def realistic_logits(batch: int, seed: int = 0) -> torch.Tensor:
    """LLM-like next-token logits: a Zipf-shaped ranking (slope 1.1 in log-rank) plus noise,
    shuffled over the vocabulary, so a few tokens carry most of the mass and the tail is long."""
    g = torch.Generator().manual_seed(seed)
    rank = torch.arange(1, VOCAB + 1, dtype=torch.float32)
    rows = []
    for _ in range(batch):
        z = -1.1 * torch.log(rank) + 0.5 * torch.randn(VOCAB, generator=g)
        rows.append(z[torch.randperm(VOCAB, generator=g)])
    return torch.stack(rows)


def transformers_step(settings: dict):
    warpers = LogitsProcessorList()
    # The list generate() builds (GenerationMixin._get_logits_processor, do_sample=True).
    if settings.get("temperature", 1.0) != 1.0:
        warpers.append(TemperatureLogitsWarper(settings["temperature"]))
    if settings.get("top_k") is not None:
        warpers.append(TopKLogitsWarper(settings["top_k"]))
    if settings.get("top_p") is not None:
        warpers.append(TopPLogitsWarper(settings["top_p"]))
    if settings.get("min_p") is not None:
        warpers.append(MinPLogitsWarper(settings["min_p"]))

    def step(input_ids, logits, generator):
        # As GenerationMixin._sample draws the next token.
        probs = torch.nn.functional.softmax(warpers(input_ids, logits), dim=-1)
        return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)

    return step


def median_ms(fn) -> float:
    for _ in range(WARMUP):
        fn()
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    results = []
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), transformers {transformers.__version__}")
    print(f"{'setting':32s} {'batch':>5s} {'llmbook ms':>11s} {'transformers ms':>16s} {'ratio':>6s}")
    for batch in BATCHES:
        logits = realistic_logits(batch)
        input_ids = torch.zeros(batch, 1, dtype=torch.long)
        for name, settings in CONFIGS.items():
            hf_step = transformers_step(settings)
            gen_ours, gen_hf = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
            ours = median_ms(lambda: sample(logits, **settings, generator=gen_ours))
            theirs = median_ms(lambda: hf_step(input_ids, logits, gen_hf))
            ratio = theirs / ours
            results.append(dict(setting=name, batch=batch, settings=settings, llmbook_ms=round(ours, 3),
                                transformers_ms=round(theirs, 3), ratio=round(ratio, 2)))
            print(f"{name:32s} {batch:5d} {ours:11.2f} {theirs:16.2f} {ratio:6.2f}x")
    nucleus = nucleus_size(realistic_logits(1), 0.9, temperature=0.7).item()
    print(f"(the benchmark logits' top-p 0.9 nucleus at T=0.7 holds {nucleus} tokens)")
    out = dict(
        benchmark="sampling step: llmbook.sampling.sample vs transformers warpers + softmax + torch.multinomial",
        target="ratio = transformers_ms / llmbook_ms >= 1.0",
        vocab=VOCAB, warmup=WARMUP, repeats=REPEATS, statistic="median",
        nucleus_size_top_p_0_9_T_0_7=nucleus,
        machine=dict(platform=platform.platform(), processor=platform.processor() or platform.machine(),
                     cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(), device="cpu",
                     python=platform.python_version(), torch=torch.__version__,
                     transformers=transformers.__version__, llmbook=llmbook.__version__),
        results=results,
    )
    path = Path(__file__).parent / "results" / "sampling.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
