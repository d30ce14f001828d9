"""Load time of the shipped TinyWorld models: ``llmbook.hub.load`` vs transformers, side by side.

For each shipped model, the median wall time (of ``--repeats`` runs, after one warm-up) to go from
the folder to a ready model and tokenizer on the CPU:
``llmbook.hub.load(name)`` against ``transformers.AutoModelForCausalLM.from_pretrained(folder)`` plus
``PreTrainedTokenizerFast(tokenizer_file=...)``. Target: llmbook no slower (ratio >= 1.0).

Usage: python benchmarks/bench_load.py [--repeats N] [--out benchmarks/results/load.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from llmbook.hub import ASSETS_DIR, SHIPPED_MODELS, load  # noqa: E402


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up: imports, file cache
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    import transformers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "load.json"))
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    transformers.logging.set_verbosity_error()
    load_before = os.getloadavg()[0]
    rows = []
    for name in SHIPPED_MODELS:
        folder = ASSETS_DIR / name

        def with_transformers():
            model = transformers.AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32)
            transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
            return model

        ours = timed(lambda: load(name, device="cpu"), args.repeats)
        theirs = timed(with_transformers, args.repeats)
        row = {"model": name, "weights_mb": round((folder / "model.safetensors").stat().st_size / 2**20, 2),
               "llmbook_ms_median": round(1000 * statistics.median(ours), 1),
               "transformers_ms_median": round(1000 * statistics.median(theirs), 1)}
        row["ratio_transformers_over_llmbook"] = round(row["transformers_ms_median"] / row["llmbook_ms_median"], 2)
        rows.append(row)
        print(f"{name:16s} {row['weights_mb']:6.2f} MB  llmbook {row['llmbook_ms_median']:7.1f} ms  "
              f"transformers {row['transformers_ms_median']:7.1f} ms  ratio {row['ratio_transformers_over_llmbook']:.2f}x")
    record = {"benchmark": "model + tokenizer load time from the shipped folder, median", "device": "cpu",
              "machine": platform.machine(), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "transformers": transformers.__version__, "repeats": args.repeats,
              "load_average_1min_before": round(load_before, 2), "results": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
