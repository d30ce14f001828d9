"""Copy a finished training run into the package, as one of the book's shipped models.

    python -m llmbook.world.ship --run runs/main --corpus runs/corpus --name tinyworld-main

writes ``lib/llmbook/assets/<name>/``: the Hugging Face files (``config.json``,
``model.safetensors``, ``tokenizer.json``, ``tokenizer_config.json``) that
``llmbook.hub.load(name)`` and ``transformers.AutoModelForCausalLM`` read, and
``training.json``: the preset, the loss curve, the measured training speed, and the
entropy floor of the run's evaluation documents, for the model card chapter.
The model is loaded back before anything is written, so a broken run is never shipped.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmbook.hub import ASSETS_DIR, SHIPPED_MODELS, ModelLoadError, load
from llmbook.model import count_parameters

from .splits import DEFAULT_MIXTURE

HF_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
MAX_TOTAL_MB = 40.0


def _read(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"missing file: {path}")
    return json.loads(path.read_text(encoding="utf-8"))


def eval_floor(eval_jsonl: Path, tokenizer) -> dict[str, float]:
    """Exact entropy of the run's evaluation documents, in nats per token (with EOS).

    Includes the choice of each document's family, as the model must make it too.
    """
    nats, tokens = 0.0, 0
    with eval_jsonl.open(encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            nats -= doc["logprob"] + math.log(DEFAULT_MIXTURE[doc["family"]])
            tokens += len(tokenizer.encode(doc["text"])) + 1
    return {"nats_per_token": nats / tokens, "n_tokens": tokens}


def training_summary(run: Path, corpus: Path) -> dict[str, Any]:
    """What the model card needs from a run folder and its corpus folder."""
    history = _read(run / "history.json")
    config = _read(run / "train_config.json")
    steps = [h for h in history if h["step"] > 0]
    rates = [h["tokens_per_s"] for h in steps if h.get("tokens_per_s")]
    model, tokenizer = load(run, device="cpu")
    return {
        "preset": config["train_config"]["model"],
        "train_config": config["train_config"],
        "parameters": count_parameters(model),
        "steps": steps[-1]["step"] if steps else 0,
        "tokens": steps[-1]["tokens"] if steps else 0,
        "median_tokens_per_s": statistics.median(rates) if rates else None,
        # Time in training steps (evaluation and checkpoints excluded): tokens / rate, summed.
        "train_step_seconds": sum((h["tokens"] - p["tokens"]) / h["tokens_per_s"]
                                  for p, h in zip(history, history[1:]) if h.get("tokens_per_s")),
        "eval_floor": eval_floor(corpus / "eval.jsonl", tokenizer),
        "corpus": _read(corpus / "corpus.json"),
        # One row per step: [step, train loss (null at step 0), eval loss (null between evaluations)].
        "history": [[h["step"], None if h["train_loss"] is None else round(h["train_loss"], 4),
                     None if h["eval_loss"] is None else round(h["eval_loss"], 4)] for h in history],
    }


def ship(run: str | Path, corpus: str | Path, name: str, assets_dir: str | Path = ASSETS_DIR) -> Path:
    """Write run ``run`` as shipped model ``name``; returns the folder. Checks it loads first."""
    if name not in SHIPPED_MODELS:
        raise ValueError(f"name must be one of {list(SHIPPED_MODELS)}, got {name!r}")
    run, corpus = Path(run), Path(corpus)
    for file in HF_FILES:
        if not (run / file).is_file():
            raise FileNotFoundError(f"missing file: {run / file} (is the run finished?)")
    summary = training_summary(run, corpus)  # loads the model: a corrupt run fails here
    target = Path(assets_dir) / name
    target.mkdir(parents=True, exist_ok=True)
    for file in HF_FILES:
        shutil.copyfile(run / file, target / file)
    (target / "training.json").write_text(json.dumps(summary) + "\n")
    total = sum(f.stat().st_size for d in Path(assets_dir).iterdir() if d.is_dir() for f in d.iterdir()) / 2**20
    if total > MAX_TOTAL_MB:
        raise ModelLoadError(f"shipped assets are {total:.1f} MB, over the {MAX_TOTAL_MB} MB budget")
    load(name if Path(assets_dir) == ASSETS_DIR else target, device="cpu")
    return target


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m llmbook.world.ship", description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="finished training run folder (python -m llmbook.train --out)")
    parser.add_argument("--corpus", required=True, help="the corpus folder it was trained on (python -m llmbook.world.corpus --out)")
    parser.add_argument("--name", required=True, choices=SHIPPED_MODELS)
    args = parser.parse_args(argv)
    target = ship(args.run, args.corpus, args.name)
    print(f"shipped {args.run} as {args.name} in {target}")
    return target


if __name__ == "__main__":
    main()
