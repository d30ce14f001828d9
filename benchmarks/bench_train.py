"""Training speed of the book's presets on this machine: tokens/s of ``llmbook.train.train`` itself.

For each preset (tiny-test, tinyworld-draft, tinyworld-main) it runs the real training loop
(forward, loss, backward, clipping, AdamW) for a few steps on random token documents with the
preset's own seq_len and batch size, float32 on the CPU, no evaluation, and reports the median of
the per-step tokens/s after the first step (which pays one-off allocation costs). From that it
estimates how long the preset's ``max_steps`` take, the number that the presets are sized by
(main <= 60 min, draft <= 15 min on a 2-core CPU).

The vocabulary defaults to the shipped TinyWorld tokenizer's. The record also copies, from each
shipped model's ``training.json``, what its full training run measured (steps, median tokens/s,
minutes in training steps): the numbers the README quotes. No GPU was available where these
results were taken; on CUDA the script times the same loop with bf16 autocast (``--device cuda``).

Usage: python benchmarks/bench_train.py [--steps N] [--vocab V] [--threads N] [--out benchmarks/results/train.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from llmbook.hub import ASSETS_DIR, SHIPPED_MODELS  # noqa: E402
from llmbook.model import CausalLM  # noqa: E402
from llmbook.tokenizer import Tokenizer  # noqa: E402
from llmbook.train import build_model_config, get_preset, train  # noqa: E402

PRESET_NAMES = ("tiny-test", "tinyworld-draft", "tinyworld-main")


def shipped_vocab() -> int:
    """Vocabulary size of the shipped TinyWorld tokenizer."""
    return Tokenizer.from_file(ASSETS_DIR / "tinyworld-main").vocab_size


def shipped_runs() -> list[dict]:
    """What each shipped model's full training run measured (from its training.json)."""
    rows = []
    for name in SHIPPED_MODELS:
        t = json.loads((ASSETS_DIR / name / "training.json").read_text())
        rows.append({"model": name, "steps": t["steps"], "tokens": t["tokens"], "parameters": t["parameters"],
                     "median_tokens_per_s": round(t["median_tokens_per_s"], 1),
                     "minutes_in_training_steps": round(t["train_step_seconds"] / 60, 1),
                     "final_eval_loss": [e for _, _, e in t["history"] if e is not None][-1],
                     "eval_floor": round(t["eval_floor"]["nats_per_token"], 4)})
    return rows


def bench_preset(name: str, steps: int, vocab: int, device: str = "cpu") -> dict:
    """Median training tokens/s of preset ``name`` over ``steps`` steps (the first one not counted)."""
    preset = get_preset(name)
    config = get_preset(name, max_steps=steps + 1, warmup_steps=1, checkpoint_every=steps + 1)
    tokens_needed = (steps + 2) * config.batch_size * config.seq_len + 1
    g = torch.Generator().manual_seed(0)
    documents = [torch.randint(3, vocab, (1000,), generator=g).tolist() for _ in range(tokens_needed // 1000 + 1)]
    result = train(config, documents, vocab_size=vocab, device=device, progress=False)
    rates = [h["tokens_per_s"] for h in result.history[1:]]  # step 1 pays one-off allocation costs
    tps = statistics.median(rates)
    model_config = build_model_config(config, vocab)
    model = CausalLM(model_config, device="meta")
    tokens_per_step = config.batch_size * config.seq_len
    row = {
        "preset": name,
        "parameters": model.num_parameters(),
        "non_embedding_parameters": model.num_parameters(exclude_embeddings=True),
        "vocab_size": vocab,
        "seq_len": config.seq_len,
        "batch_size": config.batch_size,
        "tokens_per_step": tokens_per_step,
        "steps_timed": len(rates),
        "tokens_per_s_median": round(tps, 1),
        "tokens_per_s_min": round(min(rates), 1),
        "tokens_per_s_max": round(max(rates), 1),
        "preset_max_steps": preset.max_steps,
        "estimated_minutes_for_max_steps": round(preset.max_steps * tokens_per_step / tps / 60, 1),
    }
    print(f"{name:16s} {row['parameters'] / 1e6:6.2f} M params  seq {config.seq_len:5d} x batch {config.batch_size:2d}  "
          f"{tps:10,.0f} tokens/s (min {min(rates):,.0f}, max {max(rates):,.0f})  "
          f"-> {preset.max_steps} steps in ~{row['estimated_minutes_for_max_steps']} min")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per preset (default 6)")
    parser.add_argument("--vocab", type=int, default=None, help="vocabulary size (default: the shipped tokenizer's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "train.json"))
    args = parser.parse_args()
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {platform.machine()} CPU, {torch.get_num_threads()} threads, float32")
    load_before = os.getloadavg()[0]  # other processes on a 2-core machine slow every number here
    vocab = args.vocab or shipped_vocab()
    rows = [bench_preset(name, args.steps, vocab, args.device) for name in PRESET_NAMES]
    record = {
        "benchmark": "training tokens/s of llmbook.train.train (forward + backward + AdamW), median over steps",
        "device": args.device,
        "gpu": "not measured: no GPU was available to this project's sessions so far",
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "dtype": "float32",
        "load_average_1min_before": round(load_before, 2),
        "results": rows,
        "shipped_runs": shipped_runs(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
