"""Knowledge distillation by temperature (Hinton, Vinyals & Dean 2015): does a hot teacher teach better?

The teacher's softmax at temperature ``T`` is a Boltzmann distribution over tokens with the
logits as negative energies: ``p_T(v) ∝ exp(z_v / T)``. At ``T = 1`` it is nearly one-hot on easy
positions; a higher ``T`` lifts the runners-up ("dark knowledge") into the target. The experiment
trains the same student (same initial weights, same batches) once per temperature on the
teacher's soft targets, plus once on the hard next tokens, and scores each on held-out text::

    python -m llmbook.distill --teacher tinyworld-main --out results.json [--steps 300] [--temperatures 1 2 4]

The training text is ``build_corpus(seed, n_train_docs)``: with seed 0 it is the first documents
of the shipped models' own corpus, so the teacher has seen it; the held-out documents
(:func:`llmbook.world.evaluate.heldout_documents`) come from a stream no corpus uses.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from llmbook.compare import compare_with_teacher
from llmbook.device import pick_device, seed_everything
from llmbook.hub import load
from llmbook.model import CausalLM
from llmbook.tokenizer import Tokenizer
from llmbook.train import PRESETS, PackedDataset, TrainConfig, build_model_config, encode_documents, get_preset, train
from llmbook.world import build_corpus, default_splits
from llmbook.world.evaluate import heldout_documents

__all__ = ["DEFAULT_ALPHA", "compare_with_teacher", "run_distillation", "main"]

# Soft targets only. With alpha = 1 the distilled runs differ from one another in T alone and from
# the hard run in the target alone (teacher's distribution vs the observed token); any hard-label
# share would blend the two effects. Every T has the same optimum (the student's logits equal the
# teacher's up to a constant); T decides which mismatches a student too small to reach it pays for
# most (at high T, those on the unlikely tokens). distillation_loss's T^2 factor keeps the gradient
# scale comparable across temperatures.
DEFAULT_ALPHA = 1.0


def _check_number(name: str, value: Any, low: float, high: float = math.inf, *, integer: bool, low_open: bool = False) -> None:
    kinds = (int,) if integer else (int, float)
    ok = isinstance(value, kinds) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (low_open and value == low) or value > high:
        bound = (f"> {low}" if low_open else f">= {low}") + ("" if high == math.inf else f" and <= {high}")
        raise ValueError(f"{name} must be {'an integer' if integer else 'a finite number'} {bound}, got {value!r}")


def _packed(documents: list[list[int]], config: TrainConfig, pad_id: int | None, name: str, value: int) -> PackedDataset:
    # Packed once and shared by every run: the same windows in the same order for all of them,
    # packed the way the student's preset packs its pretraining data.
    seq_len = config.seq_len
    tokens = sum(len(d) for d in documents)
    if tokens < seq_len + 1:
        raise ValueError(f"{name}={value} gives {tokens} tokens, fewer than one window of seq_len + 1 = {seq_len + 1}; raise it")
    return PackedDataset(documents, seq_len, seed=config.seed, pack=config.pack, pad_id=pad_id or 0)


def run_distillation(teacher: CausalLM, tokenizer: Tokenizer, *, temperatures: Sequence[float] = (1.0, 2.0, 4.0),
                     hard_baseline: bool = True, student: str = "tinyworld-draft", steps: int = 300,
                     alpha: float = DEFAULT_ALPHA, n_train_docs: int = 30_000, n_eval_docs_per_family: int = 50,
                     seed: int = 0, device: torch.device | str | None = None, progress: bool = True) -> dict[str, Any]:
    """Train one student per temperature on the teacher's soft targets (and one on hard labels); score them.

    Every run starts from the same initial weights (``seed``) and sees the same batches; only the
    loss differs. The student trains with its preset's batches, packing and schedule (only the
    steps, warm-up and evaluation interval are scaled to the run); the default 30,000 documents
    (~1.9 M tokens) are about twice what 300 steps of 8 x 384 tokens read on the CPU, so no window
    is seen twice there (on CUDA the batches are 8x larger: several passes). Returns a JSON-ready dict: ``settings``, ``reference`` (the teacher's and the
    untrained student's scores) and ``runs`` (label -> scores, ``eval_history`` [[step, nats/token]]
    of train's packed held-out loss, ``wall_s`` with those evaluations, ``train_tokens_per_s`` the median step).
    """
    if not isinstance(teacher, CausalLM):
        raise ValueError(f"teacher must be a llmbook CausalLM, got {type(teacher).__name__}")
    if not isinstance(tokenizer, Tokenizer):
        raise ValueError(f"tokenizer must be a llmbook Tokenizer, got {type(tokenizer).__name__}")
    if isinstance(temperatures, (str, bytes)) or not isinstance(temperatures, Sequence):
        raise ValueError(f"temperatures must be a sequence of numbers > 0, got {temperatures!r}")
    for i, t in enumerate(temperatures):
        _check_number(f"temperatures[{i}]", t, 0.0, integer=False, low_open=True)
    if len({float(t) for t in temperatures}) != len(temperatures):
        raise ValueError(f"temperatures must not repeat, got {list(temperatures)}")
    if not temperatures and not hard_baseline:
        raise ValueError("temperatures must not be empty when hard_baseline is False (nothing to train)")
    if student not in PRESETS:
        raise ValueError(f"student must be a training preset, one of {sorted(PRESETS)}; got {student!r}")
    _check_number("steps", steps, 1, integer=True)
    _check_number("alpha", alpha, 0.0, 1.0, integer=False)
    _check_number("n_train_docs", n_train_docs, 1, integer=True)
    _check_number("n_eval_docs_per_family", n_eval_docs_per_family, 1, integer=True)
    _check_number("seed", seed, 0, integer=True)
    device = teacher.device if device is None else pick_device(device)
    if teacher.device != device:
        teacher = copy.deepcopy(teacher).to(device)  # leave the caller's model where it is

    # A tenth of the run to warm up and ten evaluations: the presets' 100 warm-up steps would eat a short run.
    config = get_preset(student, max_steps=steps, warmup_steps=steps // 10, eval_every=max(1, steps // 10),
                        seed=seed, distill_alpha=alpha)
    train_docs = encode_documents([d.text for d in build_corpus(seed, n_train_docs).documents], tokenizer)
    train_set = _packed(train_docs, config, tokenizer.pad_token_id, "n_train_docs", n_train_docs)
    heldout = [d.text for d in heldout_documents(default_splits(0), seed, n_eval_docs_per_family)]
    eval_set = _packed(encode_documents(heldout, tokenizer), config, tokenizer.pad_token_id, "n_eval_docs_per_family",
                       n_eval_docs_per_family)

    specs: list[tuple[str, float | None]] = ([("hard", None)] if hard_baseline else []) + [(f"T={t:g}", float(t)) for t in temperatures]
    students: dict[str, CausalLM] = {}
    runs: dict[str, dict[str, Any]] = {}
    for i, (label, temperature) in enumerate(specs, start=1):
        if progress:
            tqdm.write(f"run {i}/{len(specs)}: {label} ({'hard labels' if temperature is None else 'soft targets'})")
        run_config = config if temperature is None else dataclasses.replace(config, distill_temperature=temperature)
        t0 = time.perf_counter()
        result = train(run_config, train_set, eval_set, tokenizer=tokenizer, teacher=None if temperature is None else teacher,
                       device=device, progress=progress)
        runs[label] = {"temperature": temperature, "wall_s": time.perf_counter() - t0,
                       "train_tokens_per_s": statistics.median(h["tokens_per_s"] for h in result.history if h["tokens_per_s"]),
                       "eval_history": [[s, loss] for s, loss in result.eval_losses]}
        students[label] = result.model

    # The common starting point, rebuilt the way train() builds it (seed first, then the random init).
    seed_everything(seed)
    students["init"] = CausalLM(build_model_config(config, tokenizer.vocab_size, bos_token_id=tokenizer.bos_token_id,
                                                   eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
                                device=device, dtype=torch.float32).eval()
    scores = compare_with_teacher(teacher, students, tokenizer, heldout)
    for label in runs:
        runs[label].update(scores[label])
    return {
        "settings": {"student": student, "steps": steps, "alpha": alpha, "temperatures": [float(t) for t in temperatures],
                     "hard_baseline": hard_baseline, "seed": seed, "n_train_docs": n_train_docs,
                     "n_train_tokens": int(train_set.tokens.numel()), "n_eval_docs": len(heldout), "device": str(device),
                     "teacher_parameters": teacher.num_parameters(), "student_parameters": students["init"].num_parameters(),
                     "train_config": {k: v for k, v in config.to_dict().items() if k != "distill_temperature"}},
        "reference": {"teacher": scores["teacher"], "init": scores["init"]},
        "runs": runs,
    }


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llmbook.distill", description=__doc__.splitlines()[0])
    p.add_argument("--teacher", required=True, help="shipped model name, local directory or Hugging Face id")
    p.add_argument("--out", required=True, help="JSON file for the results")
    p.add_argument("--student", default="tinyworld-draft", help=f"student training preset, one of {sorted(PRESETS)}")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps per run (default 300)")
    p.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 2.0, 4.0], help="distillation temperatures")
    p.add_argument("--no-hard", action="store_true", help="skip the hard-label baseline")
    p.add_argument("--alpha", type=float, default=DEFAULT_ALPHA, help="weight of the soft targets (default 1: soft only)")
    p.add_argument("--n-train-docs", type=int, default=30_000, help="training documents (default 30000)")
    p.add_argument("--n-eval-docs-per-family", type=int, default=50, help="held-out documents per family (default 50)")
    p.add_argument("--seed", type=int, default=0, help="seed of the corpus, the batches and the student's init")
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the command line; bad arguments raise ``ValueError`` naming the option."""
    args = _parser().parse_args(argv)
    # Check the cheap arguments before loading a model, so a typo fails in a second, not after a load.
    if args.student not in PRESETS:
        raise ValueError(f"student must be a training preset, one of {sorted(PRESETS)}; got {args.student!r}")
    _check_number("steps", args.steps, 1, integer=True)
    for i, t in enumerate(args.temperatures):
        _check_number(f"temperatures[{i}]", t, 0.0, integer=False, low_open=True)
    teacher, tokenizer = load(args.teacher, device=pick_device(args.device))
    results = run_distillation(teacher, tokenizer, temperatures=args.temperatures, hard_baseline=not args.no_hard,
                               student=args.student, steps=args.steps, alpha=args.alpha, n_train_docs=args.n_train_docs,
                               n_eval_docs_per_family=args.n_eval_docs_per_family, seed=args.seed,
                               device=args.device, progress=not args.no_progress)
    results["settings"]["teacher"] = args.teacher
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    for label, run in results["runs"].items():
        print(f"{label:>6}: CE {run['cross_entropy']:.4f}  KL {run['kl_from_teacher']:.4f}  "
              f"agree {run['top1_agreement']:.3f}  ({run['wall_s']:.0f} s)")
    print(f"teacher CE {results['reference']['teacher']['cross_entropy']:.4f} nats/token; results in {out}")
    return results


if __name__ == "__main__":
    try:
        main()
    except ValueError as err:
        sys.exit(f"llmbook.distill: error: {err}")
