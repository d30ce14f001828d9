"""llmbook's model vs Hugging Face transformers: prefill and decode speed, side by side in one run.

Both run the same random-init weights (created with transformers, saved, loaded by llmbook), in
float32, with the same number of torch threads, under torch.inference_mode.

- prefill tokens/s: one forward pass over a P-token prompt into an empty cache, next-token logits only
  (llmbook ``model(ids, cache, last_only=True)``; transformers ``model(ids, use_cache=True, logits_to_keep=1)``).
Ratios are of medians over interleaved repeats (the best-of-repeats ratio is printed too).
- decode tokens/s: greedy generation with the KV cache, whole loops compared
  (llmbook ``generate_ids``; transformers ``model.generate``), measured as
  (N - 1) / (time for N new tokens - time for 1 new token), so prefill cancels out.

Targets: llmbook >= 1.0x transformers on decode, >= 0.9x on prefill.
Usage: python benchmarks/bench_model.py [--quick] [--threads N] [--out benchmarks/results/model.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from llmbook.generate import generate_ids  # noqa: E402
from llmbook.hub import load_model  # noqa: E402

CONFIGS = {
    # ~100M parameters (tied embeddings): a GPT-2-small-sized Llama with grouped-query attention
    "llama-100M": dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                       num_attention_heads=12, num_key_value_heads=4, tie_word_embeddings=True),
    # ~5M parameters: the size of the book's TinyWorld models
    "llama-5M": dict(vocab_size=8192, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                     num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
}


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def bench_one(name: str, spec: dict, prompt_len: int, new_tokens: int, repeats: int) -> dict:
    import transformers

    config = transformers.LlamaConfig(**spec, max_position_embeddings=2048, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(config).eval()
    with tempfile.TemporaryDirectory() as directory:
        hf.save_pretrained(directory)
        ours = load_model(directory, device="cpu", dtype="float32")
    prompt = torch.randint(3, spec["vocab_size"], (1, prompt_len), generator=torch.Generator().manual_seed(0))
    return bench_pair(ours, hf, prompt, new_tokens, repeats)


def bench_pair(ours, hf, prompt: torch.Tensor, new_tokens: int, repeats: int) -> dict:
    """Prefill and decode of the same weights in llmbook (``ours``) and transformers (``hf``) on ``prompt`` (1, P)."""
    n_params = ours.num_parameters()
    prompt_len = prompt.shape[1]
    prompt_list = prompt[0].tolist()

    def ours_prefill():
        ours(prompt, cache=ours.new_cache(1, prompt_len + 1), last_only=True)

    def hf_prefill():
        hf(prompt, use_cache=True, logits_to_keep=1)

    def ours_generate(n):
        return generate_ids(ours, [prompt_list], max_new_tokens=n, temperature=0).tokens[0]

    def hf_generate(n):
        out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, min_new_tokens=n,
                          do_sample=False, eos_token_id=None, pad_token_id=0)
        return out[0, prompt_len:].tolist()

    times: dict[str, list[float]] = {k: [] for k in
                                     ("ours_prefill", "hf_prefill", "ours_gen1", "hf_gen1", "ours_genN", "hf_genN")}
    with torch.inference_mode():
        same_tokens = ours_generate(new_tokens) == hf_generate(new_tokens)  # also the warm-up
        ours_prefill(), hf_prefill(), ours_generate(1), hf_generate(1)
        for _ in range(repeats):  # interleaved, so drift on a noisy machine hits both alike
            times["ours_prefill"] += timed(ours_prefill, 1)
            times["hf_prefill"] += timed(hf_prefill, 1)
            times["ours_gen1"] += timed(lambda: ours_generate(1), 1)
            times["hf_gen1"] += timed(lambda: hf_generate(1), 1)
            times["ours_genN"] += timed(lambda: ours_generate(new_tokens), 1)
            times["hf_genN"] += timed(lambda: hf_generate(new_tokens), 1)
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}  # least disturbed by other processes on a shared machine
    prefill = {"llmbook": prompt_len / med["ours_prefill"], "transformers": prompt_len / med["hf_prefill"]}
    decode = {"llmbook": (new_tokens - 1) / (med["ours_genN"] - med["ours_gen1"]),
              "transformers": (new_tokens - 1) / (med["hf_genN"] - med["hf_gen1"])}
    best_prefill_ratio = best["hf_prefill"] / best["ours_prefill"]
    best_decode_ratio = (best["hf_genN"] - best["hf_gen1"]) / (best["ours_genN"] - best["ours_gen1"])
    return {
        "parameters": n_params,
        "prompt_tokens": prompt_len,
        "new_tokens": new_tokens,
        "repeats": repeats,
        "greedy_tokens_identical": same_tokens,
        "prefill_tokens_per_s": prefill,
        "decode_tokens_per_s": decode,
        "prefill_ratio": prefill["llmbook"] / prefill["transformers"],
        "decode_ratio": decode["llmbook"] / decode["transformers"],
        "best_of_repeats_prefill_ratio": best_prefill_ratio,
        "best_of_repeats_decode_ratio": best_decode_ratio,
        "median_seconds": med,
        "best_seconds": best,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter prompt/generation and fewer repeats")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "model.json")
    args = parser.parse_args()
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    torch.set_num_threads(args.threads)
    import transformers

    prompt_len, new_tokens, repeats = (64, 32, 3) if args.quick else (256, 64, 5)
    results = {}
    for name, spec in CONFIGS.items():
        r = bench_one(name, spec, prompt_len, new_tokens, repeats)
        results[name] = r
        print(f"{name} ({r['parameters'] / 1e6:.1f}M params, prompt {prompt_len}, {new_tokens} new tokens, "
              f"median of {repeats}; greedy tokens identical: {r['greedy_tokens_identical']})")
        print_ratios(r)
    out = {
        "benchmark": "model prefill/decode, llmbook vs transformers, float32",
        "targets": TARGETS,
        "machine": machine(),
        "quick": args.quick,
        "results": results,
    }
    write_json(args.out, out)


TARGETS = {"decode_ratio": 1.0, "prefill_ratio": 0.9}


def print_ratios(r: dict) -> None:
    """One line each for prefill and decode: tokens/s of both libraries, the ratio against its target."""
    for kind in ("prefill", "decode"):
        v, ratio, target = r[f"{kind}_tokens_per_s"], r[f"{kind}_ratio"], TARGETS[f"{kind}_ratio"]
        print(f"  {kind:8s} llmbook {v['llmbook']:9.1f} tok/s | transformers {v['transformers']:9.1f} tok/s | "
              f"ratio {ratio:.2f}x (target >= {target}x: {'met' if ratio >= target else 'MISSED'}; "
              f"best-of-{r['repeats']} ratio {r[f'best_of_repeats_{kind}_ratio']:.2f}x)")


def machine() -> dict:
    """What the figures were measured on."""
    import transformers

    return {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(), "device": "cpu",
    }


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
