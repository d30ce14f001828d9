"""Pretraining and fine-tuning: packed data, AdamW with warm-up + cosine, checkpoints that resume exactly.

The whole loop, one optimizer step::

    batch = windows of seq_len + 1 tokens          (B, seq_len + 1), a pure function of (seed, step)
    logits = model(batch[:, :-1])                   (B, T, V)
    loss = cross_entropy(logits, batch[:, 1:])      nats per target token (optionally masked)
    loss.backward(); clip grad norm; AdamW step with lr = schedule(step)

Because the batch of step ``s`` depends only on the seed and ``s`` (not on how many batches
were drawn before), and a checkpoint stores the weights, the optimizer moments and every RNG,
a run resumed from a checkpoint produces bit-for-bit the losses of an uninterrupted one.

A run directory ``out/`` holds::

    config.json, model.safetensors, tokenizer.json   the final model (llmbook.hub.load(out) reads it)
    train_config.json                                 the TrainConfig and model config of the run
    history.json                                      one dict per step: step, train_loss, eval_loss, lr, tokens_per_s
    checkpoints/step-000250/                          model.safetensors + config.json, optimizer.pt,
                                                      trainer_state.pt (step, lr, RNG states, history), train_config.json

Command line: ``python -m llmbook.train --preset tinyworld-main --data corpus.jsonl
--tokenizer tokenizer.json --out runs/main [--max-steps N] [--resume]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from llmbook.device import pick_device, seed_everything
from llmbook.hub import load_model, save_pretrained
from llmbook.model import CausalLM, ModelConfig
from llmbook.tokenizer import Tokenizer

__all__ = [
    "MODEL_PRESETS",
    "PRESETS",
    "TrainConfig",
    "TrainResult",
    "PackedDataset",
    "get_preset",
    "build_model_config",
    "lr_at",
    "next_token_loss",
    "distillation_loss",
    "param_groups",
    "encode_documents",
    "read_jsonl_texts",
    "split_documents",
    "evaluate",
    "latest_checkpoint",
    "train",
    "main",
]

# --------------------------------------------------------------------------- model presets
# Model shapes without vocab_size (that comes from the tokenizer at run time). Parameter counts
# below are for tied embeddings; "non-embedding" does not depend on the vocabulary.
#
#   preset            non-embedding   total at V=2048   V=4096   V=8192   train tokens/s (2-core CPU, fp32)
#   tinyworld-main        4.16 M          4.68 M         5.21 M   6.25 M   1,500-2,050 at 4 x 1024 tokens/step
#   tinyworld-draft       0.30 M          0.49 M         0.69 M   1.08 M   6,500-9,050 at 4 x 1024 tokens/step
#   tiny-test             0.02 M          (V=300: 0.03 M)                  13,000-30,000 at 8 x 32 (overhead-bound)
#
# benchmarks/bench_train.py measures the tokens/s (the real loop, V=4096); benchmarks/results/train.json
# has the numbers. The draft is >= 5x smaller than the main model for every vocabulary up to 8192
# tokens (7.6x at 4096), and the two share head_dim 32 and the 1024-token context.
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # A Llama in miniature: 6 layers of width 256, 8 query heads sharing 2 key/value heads (GQA,
    # head_dim 32), SwiGLU width 688 (~8/3 x 256, a multiple of 16). The config allows 1024
    # positions (rotary embeddings have no learned positions), but the presets train on windows
    # of 384 tokens, which hold the longest TinyWorld document (~340): beyond 384 it is untested. Six layers rather than eight: eight trained ~30% slower here
    # (1,830 vs 2,590 tokens/s, measured at 8 x 256 tokens), and with only ~5 M tokens in the hour
    # the budget goes to seeing more text rather than to depth.
    "tinyworld-main": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=6, num_attention_heads=8,
                           num_key_value_heads=2, max_position_embeddings=1024, rope_theta=10000.0,
                           rms_norm_eps=1e-5, tie_word_embeddings=True),
    # The speculative-decoding draft: same tokenizer, same context, three layers (two are the least
    # that can form induction heads) of width 96, 3 query heads of head_dim 32 (as in the main model)
    # sharing one key/value head: at long windows attention dominates a model this thin, and 3 heads
    # of 32 trained ~35% faster than 4 heads of 24 (measured at 1024-token windows). ~5x faster per token than the main model.
    "tinyworld-draft": dict(hidden_size=96, intermediate_size=256, num_hidden_layers=3, num_attention_heads=3,
                            num_key_value_heads=1, max_position_embeddings=1024, rope_theta=10000.0,
                            rms_norm_eps=1e-5, tie_word_embeddings=True),
    # For tests: trains in seconds.
    "tiny-test": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, rope_theta=10000.0,
                      rms_norm_eps=1e-5, tie_word_embeddings=True),
}

_DTYPE_CHOICES = ("auto", "float32", "bfloat16")
PACK_CHOICES = ("stream", "documents")
SCHEDULE_CHOICES = ("cosine", "wsd")


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    """Refuse anything but an integer in [low, high] (``high=None``: no upper bound), naming it.

    Shared by the modules that drive training (finetune, long_context)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low or (high is not None and value > high):
        allowed = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be an integer {allowed}, got {value!r}")


def _check_float(name: str, value: Any, low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        lb, hb = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"{name} must be a number in {lb}{low}, {high}{hb}, got {value!r}")


@dataclass
class TrainConfig:
    """Everything that defines a training run (and nothing about where its data or output live).

    ``model`` is a model preset name (a key of :data:`MODEL_PRESETS`) or a dict of
    :class:`~llmbook.model.ModelConfig` fields (``vocab_size`` and special-token ids may be left
    out: the tokenizer supplies them). ``batch_size`` is used on the CPU/MPS, ``cuda_batch_size``
    (default: ``batch_size``) on CUDA, where a GPU has room for more. ``dtype`` ``"auto"`` trains
    in float32 on the CPU and with bfloat16 autocast (float32 master weights) on CUDA.
    ``distill_temperature``/``distill_alpha`` apply only when ``train`` is given a teacher.
    ``pack``: ``"stream"`` cuts one stream of documents into windows (a document may be split
    between windows); ``"documents"`` packs whole documents into windows and pads the rest
    (see :class:`PackedDataset`). ``schedule``: ``"cosine"`` decays from the end of warm-up;
    ``"wsd"`` (warm-up, stable, decay) holds ``lr`` and decays over the last
    ``decay_fraction`` of the steps (see :func:`lr_at`). ``gradient_checkpointing`` recomputes
    each decoder layer in the backward pass (``CausalLM.gradient_checkpointing``): the same
    gradients for less activation memory and about one more forward pass per step.
    """

    model: str | dict[str, Any] = "tinyworld-main"
    seq_len: int = 1024
    batch_size: int = 4
    cuda_batch_size: int | None = None
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    max_steps: int = 1100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float | None = 1.0
    eval_every: int = 250
    eval_batches: int = 8
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    seed: int = 0
    dtype: str = "auto"
    distill_temperature: float = 2.0
    distill_alpha: float = 0.5
    pack: str = "stream"
    schedule: str = "cosine"
    decay_fraction: float = 0.2
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.betas, list):
            self.betas = tuple(self.betas)  # JSON round trip gives a list
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field outside its allowed range."""
        if isinstance(self.model, str):
            if self.model not in MODEL_PRESETS:
                raise ValueError(f"model must be a model preset name, one of {sorted(MODEL_PRESETS)}, or a dict of ModelConfig fields; got {self.model!r}")
        elif not isinstance(self.model, dict):
            raise ValueError(f"model must be a preset name (str) or a dict of ModelConfig fields, got {type(self.model).__name__}")
        _check_int("seq_len", self.seq_len, 2)
        _check_int("batch_size", self.batch_size, 1)
        if self.cuda_batch_size is not None:
            _check_int("cuda_batch_size", self.cuda_batch_size, 1)
        _check_float("lr", self.lr, 0.0, 1.0, low_open=True)
        _check_float("min_lr", self.min_lr, 0.0, self.lr)
        _check_int("max_steps", self.max_steps, 1)
        _check_int("warmup_steps", self.warmup_steps, 0, self.max_steps)
        _check_float("weight_decay", self.weight_decay, 0.0, 1.0)
        if not (isinstance(self.betas, tuple) and len(self.betas) == 2):
            raise ValueError(f"betas must be a pair (beta1, beta2) in [0, 1), got {self.betas!r}")
        for i, b in enumerate(self.betas):
            _check_float(f"betas[{i}]", b, 0.0, 1.0, high_open=True)
        _check_float("eps", self.eps, 0.0, 1.0, low_open=True)
        if self.grad_clip is not None:
            _check_float("grad_clip", self.grad_clip, 0.0, math.inf, low_open=True, high_open=True)
        _check_int("eval_every", self.eval_every, 1)
        _check_int("eval_batches", self.eval_batches, 1)
        _check_int("checkpoint_every", self.checkpoint_every, 1)
        _check_int("keep_checkpoints", self.keep_checkpoints, 1)
        _check_int("seed", self.seed, 0, 2**63 - 1)
        if self.dtype not in _DTYPE_CHOICES:
            raise ValueError(f"dtype must be one of {_DTYPE_CHOICES}, got {self.dtype!r}")
        _check_float("distill_temperature", self.distill_temperature, 0.0, math.inf, low_open=True, high_open=True)
        _check_float("distill_alpha", self.distill_alpha, 0.0, 1.0)
        if self.pack not in PACK_CHOICES:
            raise ValueError(f"pack must be one of {PACK_CHOICES}, got {self.pack!r}")
        if self.schedule not in SCHEDULE_CHOICES:
            raise ValueError(f"schedule must be one of {SCHEDULE_CHOICES}, got {self.schedule!r}")
        _check_float("decay_fraction", self.decay_fraction, 0.0, 1.0, low_open=True)
        if not isinstance(self.gradient_checkpointing, bool):
            raise ValueError(f"gradient_checkpointing must be True or False, got {self.gradient_checkpointing!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``TrainConfig(**d)`` rebuilds it)."""
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    def batch_size_for(self, device: torch.device) -> int:
        """The batch size used on ``device``."""
        if device.type == "cuda" and self.cuda_batch_size is not None:
            return self.cuda_batch_size
        return self.batch_size


# Budget (2-core CPU, float32; the model card's "How these models were made" lists the trials):
# main: 8 windows x 384 tokens = 3,072 tokens/step; whole documents per window (pack="documents",
#   0.55% padding), warm-up 100 steps, the learning rate held, then a 1 - sqrt cool-down over the
#   last 20% (schedule="wsd"). Measured just before the run: 2,878 tokens/s over 40 steps, so
#   2,900 steps (8.9 M tokens, 1.4 passes over the corpus) take ~52 min plus 12 evaluations: the
#   shipped run took 52 min 36 s wall.
# draft: the same windows; a 100-step probe measured 19,642 tokens/s, but a 5,000-step run took
#   15 min 49 s wall at a median of 16,853 tokens/s, over the 15-minute budget. 4,300 steps at
#   that median take ~13 min plus startup and evaluations.
# On CUDA both use 64 x 384 tokens/step with bf16 autocast (minutes on a GPU).
PRESETS: dict[str, TrainConfig] = {
    "tinyworld-main": TrainConfig(model="tinyworld-main", seq_len=384, batch_size=8, cuda_batch_size=64,
                                  lr=2e-3, min_lr=2e-4, warmup_steps=100, max_steps=2900, weight_decay=0.1,
                                  eval_every=250, eval_batches=8, checkpoint_every=250, seed=0,
                                  pack="documents", schedule="wsd", decay_fraction=0.2),
    "tinyworld-draft": TrainConfig(model="tinyworld-draft", seq_len=384, batch_size=8, cuda_batch_size=64,
                                   lr=4e-3, min_lr=4e-4, warmup_steps=100, max_steps=4300, weight_decay=0.1,
                                   eval_every=500, eval_batches=8, checkpoint_every=500, seed=0,
                                   pack="documents", schedule="wsd", decay_fraction=0.2),
    "tiny-test": TrainConfig(model="tiny-test", seq_len=32, batch_size=8, lr=3e-3, min_lr=3e-4, warmup_steps=10,
                             max_steps=100, weight_decay=0.1, eval_every=25, eval_batches=4, checkpoint_every=25, seed=0),
}


def get_preset(name: str, **overrides: Any) -> TrainConfig:
    """A fresh copy of preset ``name`` with fields replaced by ``overrides`` (validated)."""
    if not isinstance(name, str) or name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}")
    unknown = set(overrides) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise ValueError(f"unknown TrainConfig field(s) {sorted(unknown)}; fields: {[f.name for f in dataclasses.fields(TrainConfig)]}")
    return dataclasses.replace(PRESETS[name], **overrides)


def build_model_config(config: TrainConfig, vocab_size: int, *, bos_token_id: int | None = None,
                       eos_token_id: int | None = None, pad_token_id: int | None = None) -> ModelConfig:
    """The ModelConfig of ``config.model`` for a vocabulary of ``vocab_size`` tokens."""
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config must be a TrainConfig, got {type(config).__name__}")
    _check_int("vocab_size", vocab_size, 1)
    fields = dict(MODEL_PRESETS[config.model]) if isinstance(config.model, str) else dict(config.model)
    fields.setdefault("vocab_size", int(vocab_size))
    for key, value in (("bos_token_id", bos_token_id), ("eos_token_id", eos_token_id), ("pad_token_id", pad_token_id)):
        if value is not None:
            fields.setdefault(key, value)
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    if set(fields) - known:
        raise ValueError(f"config.model has unknown ModelConfig field(s) {sorted(set(fields) - known)}")
    model_config = ModelConfig(**fields)
    if config.seq_len > model_config.max_position_embeddings:
        raise ValueError(f"seq_len must be <= the model's max_position_embeddings={model_config.max_position_embeddings}, got {config.seq_len}")
    return model_config


# --------------------------------------------------------------------------- learning-rate schedule
def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate of optimizer update ``step`` (0-based): linear warm-up, then a decay to ``min_lr``.

    Warm-up rises as ``lr * (step + 1) / warmup_steps`` (never exactly 0, which would waste a step).
    Warm-up matters because Adam's second-moment estimates are noise for the first updates, and a
    full-size step on them can throw the weights somewhere they never recover from. Then:

    - ``schedule="cosine"``: a cosine from ``lr`` on update ``warmup_steps`` to exactly ``min_lr``
      on the last update ``max_steps - 1``.
    - ``schedule="wsd"`` (warm-up, stable, decay; Hu et al. 2024, "MiniCPM"; Hägele et al. 2024,
      "Scaling Laws and Compute-Optimal Training Beyond Fixed Training Durations"): ``lr`` held
      until the last ``decay_fraction`` of the updates, then the "1 - sqrt" cool-down
      ``min_lr + (lr - min_lr) * (1 - sqrt(progress))``, which ends at exactly ``min_lr``. The loss
      falls mostly during the cool-down, so the model trains at the full rate for longer than
      under a cosine that starts decaying at once.
    """
    _check_int("step", step, 0, config.max_steps - 1)
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.schedule == "wsd":
        decay_steps = max(1, round(config.decay_fraction * config.max_steps))
        decay_start = max(config.warmup_steps, config.max_steps - decay_steps)
        if step < decay_start:
            return config.lr
        span = config.max_steps - 1 - decay_start
        progress = (step - decay_start) / span if span > 0 else 1.0
        return config.min_lr + (config.lr - config.min_lr) * (1.0 - math.sqrt(progress))
    span = config.max_steps - 1 - config.warmup_steps
    progress = (step - config.warmup_steps) / span if span > 0 else 1.0
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1.0 + math.cos(math.pi * progress))


# --------------------------------------------------------------------------- data
class PackedDataset:
    """Token documents concatenated into one stream and cut into windows of ``seq_len + 1`` tokens.

    Window ``i`` is ``stream[i * seq_len : i * seq_len + seq_len + 1]``: consecutive windows
    overlap by one token, so every token after the first is a prediction target exactly once.
    A window may span a document boundary (the EOS/BOS tokens tell the model where); the leftover
    tail shorter than a window is dropped. ``loss_masks`` (one 0/1 list per document, same
    lengths) mark which tokens count as targets, e.g. only the answers when fine-tuning.

    With ``pack="documents"``, no document is cut: whole documents are packed into windows of
    ``seq_len + 1`` tokens by best fit (each document, in the given order, goes into the open
    window with the least room that still holds it), and the rest of each window is padding
    that is never a target. No document is cut in two, so the model always sees a document from
    its own BOS on; the first document of a window also starts at position 0, as every prompt
    does, and later ones follow an EOS (there is no per-document attention mask: a document can
    attend to the whole documents before it in its window, as in stream packing).
    Padding only follows the last document of a window, so under the causal mask no real
    token attends to it: its id (``pad_id``) changes nothing. ``padding_fraction`` reports the
    share of window slots that are padding. A document longer than a window is refused.

    ``batch(step, batch_size)`` returns the batch of training step ``step``: the windows at
    slots ``step * batch_size ...`` of an endless sequence of epochs, each epoch a permutation
    seeded by ``(seed, epoch)``. It depends on nothing else, which is what makes resuming exact.
    """

    def __init__(self, documents: Sequence[Sequence[int]], seq_len: int, *, seed: int = 0,
                 loss_masks: Sequence[Sequence[int]] | None = None, vocab_size: int | None = None,
                 pack: str = "stream", pad_id: int = 0) -> None:
        _check_int("seq_len", seq_len, 2)
        if pack not in PACK_CHOICES:
            raise ValueError(f"pack must be one of {PACK_CHOICES}, got {pack!r}")
        _check_int("pad_id", pad_id, 0, None if vocab_size is None else vocab_size - 1)
        _check_int("seed", seed, 0, 2**63 - 1)
        if isinstance(documents, (str, bytes)) or not isinstance(documents, Sequence) or len(documents) == 0:
            raise ValueError("documents must be a non-empty sequence of token-id lists")
        if loss_masks is not None and (not isinstance(loss_masks, Sequence) or len(loss_masks) != len(documents)):
            raise ValueError(f"loss_masks must have one mask per document ({len(documents)}), got {type(loss_masks).__name__}"
                             + (f" of length {len(loss_masks)}" if isinstance(loss_masks, Sequence) else ""))
        pieces, masks = [], []
        for i, doc in enumerate(documents):
            t = torch.as_tensor(doc, dtype=torch.long)
            if t.ndim != 1 or t.numel() == 0:
                raise ValueError(f"documents[{i}] must be a non-empty 1-D list of token ids, got shape {tuple(t.shape)}")
            pieces.append(t)
            if loss_masks is not None:
                m = torch.as_tensor(loss_masks[i], dtype=torch.bool)
                if m.shape != t.shape:
                    raise ValueError(f"loss_masks[{i}] must have the length of documents[{i}] ({t.numel()}), got shape {tuple(m.shape)}")
                masks.append(m)
        self.tokens = torch.cat(pieces)  # (N,) the whole stream
        self.mask = torch.cat(masks) if masks else None  # (N,) or None: every target counts
        lo, hi = int(self.tokens.min()), int(self.tokens.max())
        if lo < 0 or (vocab_size is not None and hi >= vocab_size):
            raise ValueError(f"documents must hold token ids in [0, {'vocab_size - 1' if vocab_size is None else vocab_size - 1}], got values in [{lo}, {hi}]")
        self.seq_len = int(seq_len)
        self.seed = int(seed)
        self.pack = pack
        self.num_documents = len(documents)
        self.padding_fraction = 0.0
        self._windows: torch.Tensor | None = None  # (num_windows, seq_len + 1) when pack="documents"
        self._window_masks: torch.Tensor | None = None  # (num_windows, seq_len) targets that count
        if pack == "documents":
            self._pack_documents(pieces, masks or None, pad_id)
            self.num_windows = self._windows.shape[0]
        else:
            self.num_windows = (self.tokens.numel() - 1) // self.seq_len
        if self.num_windows < 1:
            raise ValueError(f"documents hold {self.tokens.numel()} tokens, fewer than one window of seq_len + 1 = {self.seq_len + 1}")
        self._perm_cache: dict[int, torch.Tensor] = {}

    def _pack_documents(self, pieces: list[torch.Tensor], masks: list[torch.Tensor] | None, pad_id: int) -> None:
        size = self.seq_len + 1
        # Best fit: open windows are kept in buckets by how much room they have left, so a
        # document of length n goes to a window with the smallest room >= n in O(size) steps.
        by_room: list[list[int]] = [[] for _ in range(size + 1)]
        contents: list[list[int]] = []
        room: list[int] = []
        for i, piece in enumerate(pieces):
            n = piece.numel()
            if n > size:
                raise ValueError(f"documents[{i}] has {n} tokens, more than a window of seq_len + 1 = {size}; "
                                 f"raise seq_len or use pack='stream'")
            for r in range(n, size + 1):
                if by_room[r]:
                    w = by_room[r].pop()
                    break
            else:
                w = len(contents)
                contents.append([])
                room.append(size)
            contents[w].append(i)
            room[w] -= n
            by_room[room[w]].append(w)
        windows = torch.full((len(contents), size), pad_id, dtype=torch.long)
        targets = torch.zeros((len(contents), size), dtype=torch.bool)  # which tokens may be targets
        for w, members in enumerate(contents):
            at = 0
            for i in members:
                n = pieces[i].numel()
                windows[w, at:at + n] = pieces[i]
                targets[w, at:at + n] = True if masks is None else masks[i]
                at += n
        self._windows = windows
        self._window_masks = targets[:, 1:]
        self.padding_fraction = sum(room) / (len(contents) * size)

    def __len__(self) -> int:
        return self.num_windows

    def __repr__(self) -> str:
        return (f"PackedDataset(documents={self.num_documents}, tokens={self.tokens.numel()}, seq_len={self.seq_len}, "
                f"windows={self.num_windows}, masked={self.mask is not None}, pack={self.pack!r}"
                + (f", padding={self.padding_fraction:.2%})" if self.pack == "documents" else ")"))

    def window(self, i: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Tokens (seq_len + 1,) of window ``i`` and its loss mask over the targets (seq_len,) or None."""
        _check_int("i", i, 0, self.num_windows - 1)
        if self._windows is not None:
            return self._windows[i], self._window_masks[i]
        start = i * self.seq_len
        tokens = self.tokens[start:start + self.seq_len + 1]
        mask = None if self.mask is None else self.mask[start + 1:start + self.seq_len + 1]
        return tokens, mask

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perm_cache:
            if len(self._perm_cache) > 4:
                self._perm_cache.clear()
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**63)
            self._perm_cache[epoch] = torch.randperm(self.num_windows, generator=g)
        return self._perm_cache[epoch]

    def _stack(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        windows = [self.window(int(i)) for i in indices]
        batch = torch.stack([w for w, _ in windows])  # (B, seq_len + 1)
        # (B, seq_len); documents packing always has one (padding is never a target)
        mask = None if windows[0][1] is None else torch.stack([m for _, m in windows])
        return batch[:, :-1], batch[:, 1:], mask

    def batch(self, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(inputs (B, T), targets (B, T), loss_mask (B, T) or None)`` for training step ``step``."""
        _check_int("step", step, 0)
        _check_int("batch_size", batch_size, 1)
        slots = range(step * batch_size, (step + 1) * batch_size)
        return self._stack([int(self._permutation(s // self.num_windows)[s % self.num_windows]) for s in slots])

    def eval_batches(self, batch_size: int, max_batches: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """Up to ``max_batches`` batches of consecutive windows, in order, no shuffling (the same every evaluation)."""
        _check_int("batch_size", batch_size, 1)
        _check_int("max_batches", max_batches, 1)
        n = min(self.num_windows, batch_size * max_batches)
        return [self._stack(range(s, min(s + batch_size, n))) for s in range(0, n, batch_size)]


def read_jsonl_texts(path: str | os.PathLike[str]) -> list[str]:
    """The ``"text"`` of every line of a JSONL file (blank lines skipped); errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"data file not found: {path}")
    texts = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n}: not valid JSON ({err.msg})") from err
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise ValueError(f'{path}:{n}: each line must be a JSON object with a string "text" field')
            texts.append(record["text"])
    if not texts:
        raise ValueError(f"data file {path} holds no documents")
    return texts


def encode_documents(texts: Sequence[str], tokenizer: Tokenizer) -> list[list[int]]:
    """Each text as ``[BOS, ..., EOS]`` token ids (the tokenizer must define both)."""
    if not isinstance(tokenizer, Tokenizer):
        raise ValueError(f"tokenizer must be a llmbook Tokenizer, got {type(tokenizer).__name__}")
    if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer must define bos_token_id and eos_token_id to delimit documents, got {tokenizer!r}")
    return [ids + [tokenizer.eos_token_id] for ids in tokenizer.encode_batch(list(texts), add_bos=True)]


def split_documents(documents: Sequence[Any], eval_fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """Shuffle (seeded) and split into (train, eval) by whole documents: eval text is never trained on."""
    _check_float("eval_fraction", eval_fraction, 0.0, 1.0, low_open=True, high_open=True)
    _check_int("seed", seed, 0, 2**63 - 1)
    if len(documents) < 2:
        raise ValueError(f"documents must hold at least 2 documents to split, got {len(documents)}")
    order = torch.randperm(len(documents), generator=torch.Generator().manual_seed(seed)).tolist()
    n_eval = min(len(documents) - 1, max(1, round(eval_fraction * len(documents))))
    return [documents[i] for i in order[n_eval:]], [documents[i] for i in order[:n_eval]]


# --------------------------------------------------------------------------- losses
def next_token_loss(logits: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy (nats per target token) of ``logits`` (B, T, V) against ``targets`` (B, T).

    With ``loss_mask`` (B, T), only positions where it is true count (the mean is over those);
    a batch with none gives 0 (and zero gradient) rather than NaN.
    """
    if logits.ndim != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(f"logits must be (B, T, V) and targets (B, T); got {tuple(logits.shape)} and {tuple(targets.shape)}")
    per_token = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")  # (B*T,)
    if loss_mask is None:
        return per_token.mean()
    if loss_mask.shape != targets.shape:
        raise ValueError(f"loss_mask must have the shape of targets {tuple(targets.shape)}, got {tuple(loss_mask.shape)}")
    m = loss_mask.flatten().to(per_token.dtype)
    return (per_token * m).sum() / m.sum().clamp(min=1.0)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, alpha: float,
                      labels: torch.Tensor | None, loss_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Knowledge distillation (Hinton, Vinyals & Dean 2015): ``alpha * T^2 * KL(p_T || q_T) + (1 - alpha) * CE(labels)``.

    ``p_T`` and ``q_T`` are the teacher's and student's softmax at temperature ``T``. The soft
    targets' gradients scale as ``1 / T^2``, so multiplying by ``T^2`` keeps their weight relative
    to the hard-label term the same whatever ``T`` is. Logits are (B, T, V) (or (N, V)); the KL is
    summed over the vocabulary and averaged over positions (those where ``loss_mask`` is true).
    ``labels`` may be None only when ``alpha == 1`` (soft targets only).
    """
    if not isinstance(student_logits, torch.Tensor) or not isinstance(teacher_logits, torch.Tensor):
        raise ValueError("student_logits and teacher_logits must be tensors")
    if student_logits.shape != teacher_logits.shape or student_logits.ndim < 2:
        raise ValueError(f"student_logits and teacher_logits must have the same shape (..., V), got "
                         f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")
    _check_float("temperature", temperature, 0.0, math.inf, low_open=True, high_open=True)
    _check_float("alpha", alpha, 0.0, 1.0)
    if labels is None and alpha < 1:
        raise ValueError(f"labels must be given unless alpha == 1 (soft targets only), got alpha={alpha}")
    v = student_logits.shape[-1]
    s = student_logits.float().reshape(-1, v)  # (N, V)
    t = teacher_logits.detach().float().reshape(-1, v)  # the teacher is a fixed target
    log_q = F.log_softmax(s / temperature, dim=-1)
    log_p = F.log_softmax(t / temperature, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # (N,) KL(p || q) per position
    m = None if loss_mask is None else loss_mask.reshape(-1).to(kl.dtype)
    if m is not None and m.numel() != kl.numel():
        raise ValueError(f"loss_mask must have one entry per position ({kl.numel()}), got shape {tuple(loss_mask.shape)}")

    def mean(x: torch.Tensor) -> torch.Tensor:
        return x.mean() if m is None else (x * m).sum() / m.sum().clamp(min=1.0)

    loss = alpha * temperature**2 * mean(kl)
    if alpha < 1:
        if labels.numel() != kl.numel():
            raise ValueError(f"labels must have one entry per position ({kl.numel()}), got shape {tuple(labels.shape)}")
        ce = F.cross_entropy(s, labels.reshape(-1), reduction="none")
        loss = loss + (1 - alpha) * mean(ce)
    return loss


# --------------------------------------------------------------------------- optimizer
def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on the weight matrices of linear layers only.

    Not decayed: RMSNorm gains (decay would pull them toward 0, against the unit scale the norm
    is there to set), biases (offsets, not capacity that needs regularizing), and the token
    embedding: a rare token's row gets a gradient only when that token appears, yet decay
    shrinks it on every step, erasing what was learned between visits (with tied embeddings this
    matrix is also the output head). Tied tensors are listed once.
    """
    _check_float("weight_decay", weight_decay, 0.0, 1.0)
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if id(p) in seen or not p.requires_grad:
            continue
        seen.add(id(p))
        (decay if p.ndim >= 2 and id(p) not in embeddings else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# --------------------------------------------------------------------------- evaluation
def _autocast(device: torch.device, dtype: str):
    """bf16 autocast on CUDA ("auto"/"bfloat16"), or on the CPU when asked for; otherwise a no-op context."""
    use_bf16 = dtype == "bfloat16" or (dtype == "auto" and device.type == "cuda")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16)


@torch.no_grad()
def evaluate(model: CausalLM, dataset: PackedDataset, batch_size: int, max_batches: int, dtype: str = "auto") -> float:
    """Mean next-token loss in nats per (unmasked) target token over the first ``max_batches`` batches."""
    if not isinstance(model, CausalLM):
        raise ValueError(f"model must be a llmbook CausalLM, got {type(model).__name__}")
    if dtype not in _DTYPE_CHOICES:
        raise ValueError(f"dtype must be one of {_DTYPE_CHOICES}, got {dtype!r}")
    if not isinstance(dataset, PackedDataset):
        raise ValueError(f"dataset must be a PackedDataset, got {type(dataset).__name__}")
    was_training = model.training
    model.eval()
    total, count = 0.0, 0.0
    device = model.device
    for inputs, targets, mask in dataset.eval_batches(batch_size, max_batches):
        with _autocast(device, dtype):
            logits = model(inputs.to(device))
        nll = F.cross_entropy(logits.float().flatten(0, 1), targets.to(device).flatten(), reduction="none")
        if mask is not None:
            m = mask.to(device).flatten().float()
            total += float((nll * m).sum())
            count += float(m.sum())
        else:
            total += float(nll.sum())
            count += nll.numel()
    model.train(was_training)
    return total / max(count, 1.0)


# --------------------------------------------------------------------------- checkpoints
def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    np_state = np.random.get_state()
    state["numpy"] = (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:])
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def latest_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint folder in ``run_dir/checkpoints`` (None if there is none)."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return None
    done = [p for p in folder.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp") and (p / "trainer_state.pt").is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[1])) if done else None


def _save_checkpoint(run_dir: Path, step: int, model: CausalLM, optimizer: torch.optim.Optimizer, config: TrainConfig,
                     history: list[dict[str, Any]], batch_size: int) -> Path:
    folder = run_dir / "checkpoints"
    final = folder / f"step-{step:06d}"
    tmp = folder / f"step-{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_pretrained(model, None, tmp)  # config.json + model.safetensors
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save({"step": step, "scheduler": {"next_update": step, "last_lr": optimizer.param_groups[0]["lr"]},
                "rng": _rng_state(), "history": history, "batch_size": batch_size}, tmp / "trainer_state.pt")
    (tmp / "train_config.json").write_text(json.dumps(_run_record(config, model), indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)  # a crash mid-write leaves only a .tmp folder, which resume ignores
    kept = sorted((p for p in folder.glob("step-*") if not p.name.endswith(".tmp")), key=lambda p: int(p.name.split("-")[1]))
    for old in kept[:-config.keep_checkpoints]:
        shutil.rmtree(old)
    return final


def _run_record(config: TrainConfig, model: CausalLM) -> dict[str, Any]:
    # config.json can only hold RoPE models; the others keep llmbook's own field names.
    rope = model.config.position_encoding == "rope"
    return {"train_config": config.to_dict(), "model_config": model.config.to_hf() if rope else model.config.to_dict()}


# --------------------------------------------------------------------------- the loop
@dataclass
class TrainResult:
    """What :func:`train` returns: the trained model (eval mode), the per-step history and the run directory."""

    model: CausalLM
    history: list[dict[str, Any]] = field(default_factory=list)
    run_dir: Path | None = None

    @property
    def eval_losses(self) -> list[tuple[int, float]]:
        """``(step, eval_loss)`` for every evaluation, in order."""
        return [(h["step"], h["eval_loss"]) for h in self.history if h.get("eval_loss") is not None]


def _as_dataset(data: PackedDataset | Sequence[Sequence[int]] | None, name: str, config: TrainConfig,
                vocab_size: int, pad_id: int | None = None) -> PackedDataset | None:
    if data is None or isinstance(data, PackedDataset):
        if isinstance(data, PackedDataset) and data.seq_len != config.seq_len:
            raise ValueError(f"{name}.seq_len={data.seq_len} differs from config.seq_len={config.seq_len}")
        if isinstance(data, PackedDataset) and data.pack != config.pack:
            raise ValueError(f"{name}.pack={data.pack!r} differs from config.pack={config.pack!r}")
        return data
    return PackedDataset(data, config.seq_len, seed=config.seed, vocab_size=vocab_size, pack=config.pack,
                         pad_id=pad_id or 0)


def _comparable(config: TrainConfig) -> dict[str, Any]:
    d = config.to_dict()
    # These may change on resume (e.g. train longer, or recompute activations to fit memory)
    # without changing the steps already taken.
    for key in ("max_steps", "eval_every", "checkpoint_every", "keep_checkpoints", "eval_batches",
                "gradient_checkpointing"):
        d.pop(key, None)
    if config.schedule != "wsd":
        d.pop("decay_fraction")  # only the WSD schedule reads it
    return d


def train(config: TrainConfig | str, train_data: PackedDataset | Sequence[Sequence[int]],
          eval_data: PackedDataset | Sequence[Sequence[int]] | None = None, *, tokenizer: Tokenizer | None = None,
          vocab_size: int | None = None, model: CausalLM | None = None, teacher: CausalLM | None = None,
          out_dir: str | os.PathLike[str] | None = None, resume: bool = False,
          device: torch.device | str | None = None, progress: bool = True) -> TrainResult:
    """Train a model (new from ``config.model``, or the given ``model`` for fine-tuning) and return a :class:`TrainResult`.

    ``train_data``/``eval_data``: a :class:`PackedDataset` or a list of token-id documents
    (``[BOS, ..., EOS]``, see :func:`encode_documents`). The vocabulary size comes from
    ``tokenizer``, else ``vocab_size``, else ``model``. With ``teacher`` the loss is
    :func:`distillation_loss` against its logits (``config.distill_temperature``, ``distill_alpha``).
    With ``out_dir`` the run writes checkpoints, ``history.json`` and the final model there
    (``llmbook.hub.load(out_dir)`` reads it back); ``resume=True`` continues from its latest checkpoint.
    """
    if isinstance(config, str):
        config = get_preset(config)
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config must be a TrainConfig or a preset name from {sorted(PRESETS)}, got {type(config).__name__}")
    config.validate()
    if tokenizer is not None and not isinstance(tokenizer, Tokenizer):
        raise ValueError(f"tokenizer must be a llmbook Tokenizer or None, got {type(tokenizer).__name__}")
    if model is not None and not isinstance(model, CausalLM):
        raise ValueError(f"model must be a llmbook CausalLM or None, got {type(model).__name__}")
    if teacher is not None and not isinstance(teacher, CausalLM):
        raise ValueError(f"teacher must be a llmbook CausalLM or None, got {type(teacher).__name__}")
    if resume and out_dir is None:
        raise ValueError("resume=True needs out_dir (the run directory holding the checkpoints)")
    device = pick_device(device) if model is None else model.device

    if tokenizer is not None:
        vocab = tokenizer.vocab_size
    elif vocab_size is not None:
        vocab = vocab_size
    elif model is not None:
        vocab = model.config.vocab_size
    else:
        raise ValueError("give tokenizer, vocab_size or model so the vocabulary size is known")
    _check_int("vocab_size", vocab, 1)

    seed_everything(config.seed)  # before building the model: its random init draws from the seeded RNG
    if model is None:
        special = {} if tokenizer is None else dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                                     pad_token_id=tokenizer.pad_token_id)
        model = CausalLM(build_model_config(config, vocab, **special), device=device, dtype=torch.float32)
    elif config.seq_len > model.config.max_position_embeddings:
        raise ValueError(f"seq_len must be <= the model's max_position_embeddings={model.config.max_position_embeddings}, got {config.seq_len}")
    if vocab > model.config.vocab_size:
        raise ValueError(f"the tokenizer has {vocab} tokens but the model only {model.config.vocab_size} embeddings")
    if teacher is not None and teacher.config.vocab_size != model.config.vocab_size:
        raise ValueError(f"teacher vocab_size {teacher.config.vocab_size} must equal the student's {model.config.vocab_size}")

    train_set = _as_dataset(train_data, "train_data", config, model.config.vocab_size, model.config.pad_token_id)
    if train_set is None:
        raise ValueError("train_data must be given")
    eval_set = _as_dataset(eval_data, "eval_data", config, model.config.vocab_size, model.config.pad_token_id)
    batch_size = config.batch_size_for(device)

    if device.type == "cuda":
        # TF32 matmuls for whatever autocast leaves in float32: ~free speed, precision ample for training.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr, betas=config.betas,
                                  eps=config.eps, fused=device.type == "cuda")
    history: list[dict[str, Any]] = []
    start = 0
    run_dir = Path(out_dir) if out_dir is not None else None
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = latest_checkpoint(run_dir) if resume else None
    if resume and checkpoint is None:
        raise ValueError(f"resume=True but {run_dir / 'checkpoints'} holds no complete checkpoint")
    if checkpoint is not None:
        saved = TrainConfig(**json.loads((checkpoint / "train_config.json").read_text(encoding="utf-8"))["train_config"])
        mine, theirs = _comparable(config), _comparable(saved)
        differ = sorted(k for k in mine if mine[k] != theirs.get(k))
        if differ:
            raise ValueError(f"cannot resume {checkpoint}: config field(s) {differ} differ from the checkpoint's "
                             f"({', '.join(f'{k}={theirs.get(k)!r}' for k in differ)})")
        state = torch.load(checkpoint / "trainer_state.pt", weights_only=True)
        if state["batch_size"] != batch_size:
            raise ValueError(f"cannot resume {checkpoint}: it was trained with batch size {state['batch_size']}, this device uses {batch_size}")
        model.load_state_dict(load_model(checkpoint, device=device, dtype=torch.float32).state_dict())
        optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True, map_location=device))
        start, history = int(state["step"]), list(state["history"])
        if start > config.max_steps:
            raise ValueError(f"max_steps={config.max_steps} is below the checkpoint's step {start}")
        # max_steps may change on resume, but only where the schedule agrees with the steps already
        # taken: a cosine or a WSD cool-down already under way would jump back up.
        if start > 0 and not math.isclose(lr_at(start - 1, config), state["scheduler"]["last_lr"], rel_tol=1e-9):
            raise ValueError(f"cannot resume {checkpoint} with max_steps={config.max_steps}: the schedule would give "
                             f"lr={lr_at(start - 1, config):.3g} at step {start - 1}, where the run used "
                             f"{state['scheduler']['last_lr']:.3g}")
        _set_rng_state(state["rng"])
    if run_dir is not None:
        (run_dir / "train_config.json").write_text(json.dumps(_run_record(config, model), indent=2) + "\n", encoding="utf-8")
    if teacher is not None:
        teacher.eval()

    model.train()
    model.gradient_checkpointing = config.gradient_checkpointing
    if start == 0 and eval_set is not None:
        history.append({"step": 0, "train_loss": None, "eval_loss": evaluate(model, eval_set, batch_size, config.eval_batches, config.dtype),
                        "lr": 0.0, "tokens_per_s": None, "tokens": 0})
    # Window slots per step, padding included (with pack="documents" the padding is
    # train_set.padding_fraction of them: 0.55% on the TinyWorld corpus).
    tokens_per_step = batch_size * config.seq_len
    bar = tqdm(total=config.max_steps, initial=start, disable=not progress, desc="train", unit="step", dynamic_ncols=True)
    smooth_tps = None
    for step in range(start, config.max_steps):
        t0 = time.perf_counter()
        lr = lr_at(step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        inputs, targets, mask = train_set.batch(step, batch_size)
        inputs, targets = inputs.to(device), targets.to(device)
        mask = None if mask is None else mask.to(device)
        with _autocast(device, config.dtype):
            logits = model(inputs)
            if teacher is not None:
                with torch.no_grad():
                    teacher_logits = teacher(inputs)
        if teacher is not None:
            loss = distillation_loss(logits, teacher_logits, config.distill_temperature, config.distill_alpha, targets, mask)
        else:
            loss = next_token_loss(logits, targets, mask)
        # The loss keeps what its backward needs (the log-probabilities); the logits themselves
        # would otherwise stay alive through the backward pass and into the next forward.
        del logits
        if teacher is not None:
            del teacher_logits
        loss.backward()
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        # Free the gradients now, not before the next backward: they would otherwise sit beside
        # the next forward pass's activations, at the step's memory peak (see llmbook.memory).
        optimizer.zero_grad(set_to_none=True)
        loss_value = float(loss.detach())  # syncs the device, so the timing below is honest
        tps = tokens_per_step / (time.perf_counter() - t0)
        smooth_tps = tps if smooth_tps is None else 0.9 * smooth_tps + 0.1 * tps
        done = step + 1
        entry: dict[str, Any] = {"step": done, "train_loss": loss_value, "eval_loss": None, "lr": lr,
                                 "tokens_per_s": tps, "tokens": done * tokens_per_step}
        if eval_set is not None and (done % config.eval_every == 0 or done == config.max_steps):
            entry["eval_loss"] = evaluate(model, eval_set, batch_size, config.eval_batches, config.dtype)
        history.append(entry)
        postfix = {"loss": f"{loss_value:.3f}", "lr": f"{lr:.2e}", "tok/s": f"{smooth_tps:,.0f}"}
        if entry["eval_loss"] is not None:
            postfix["eval"] = f"{entry['eval_loss']:.3f}"
        bar.set_postfix(postfix, refresh=False)
        bar.update(1)
        if run_dir is not None and (done % config.checkpoint_every == 0 or done == config.max_steps):
            _save_checkpoint(run_dir, done, model, optimizer, config, history, batch_size)
            (run_dir / "history.json").write_text(json.dumps(history, indent=1) + "\n", encoding="utf-8")
    bar.close()

    model.eval()
    if run_dir is not None:
        save_pretrained(model, tokenizer, run_dir)
        (run_dir / "history.json").write_text(json.dumps(history, indent=1) + "\n", encoding="utf-8")
    return TrainResult(model=model, history=history, run_dir=run_dir)


# --------------------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llmbook.train", description="Train a model of the book on a JSONL corpus.")
    p.add_argument("--preset", required=True, help=f"one of {sorted(PRESETS)}")
    p.add_argument("--data", required=True, help='JSONL file, one {"text": ...} document per line')
    p.add_argument("--tokenizer", required=True, help="tokenizer.json (with a tokenizer_config.json beside it naming BOS/EOS)")
    p.add_argument("--out", required=True, help="run directory (checkpoints, history.json, final model)")
    p.add_argument("--eval-data", default=None, help="JSONL of held-out documents (default: hold out --eval-fraction of --data)")
    p.add_argument("--eval-fraction", type=float, default=0.02, help="share of documents held out for evaluation (default 0.02)")
    p.add_argument("--max-steps", type=int, default=None, help="override the preset's max_steps")
    p.add_argument("--seed", type=int, default=None, help="override the preset's seed")
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best available)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> TrainResult:
    """Run the command line; invalid arguments raise ``ValueError`` with a message naming the file or option."""
    args = _parser().parse_args(argv)
    overrides = {k: v for k, v in (("max_steps", args.max_steps), ("seed", args.seed)) if v is not None}
    if args.preset in PRESETS and isinstance(args.max_steps, int) and 0 < args.max_steps < PRESETS[args.preset].warmup_steps:
        # A short smoke run (--max-steps 5): warm up over the first tenth instead of refusing.
        overrides["warmup_steps"] = args.max_steps // 10
        print(f"note: warmup_steps lowered to {overrides['warmup_steps']} for --max-steps {args.max_steps}", file=sys.stderr)
    config = get_preset(args.preset, **overrides)
    tokenizer_path = Path(args.tokenizer)
    if not tokenizer_path.exists():
        raise ValueError(f"tokenizer file not found: {tokenizer_path}")
    tokenizer = Tokenizer.from_file(tokenizer_path)
    texts = read_jsonl_texts(args.data)
    documents = encode_documents(texts, tokenizer)
    if args.eval_data is not None:
        train_docs, eval_docs = documents, encode_documents(read_jsonl_texts(args.eval_data), tokenizer)
    else:
        train_docs, eval_docs = split_documents(documents, args.eval_fraction, config.seed)
    result = train(config, train_docs, eval_docs, tokenizer=tokenizer, out_dir=args.out, resume=args.resume,
                   device=args.device, progress=not args.no_progress)
    final = result.eval_losses[-1][1] if result.eval_losses else float("nan")
    print(f"done: {config.max_steps} steps, eval loss {final:.4f} nats/token; model saved to {args.out}")
    return result


if __name__ == "__main__":
    try:
        main()
    except ValueError as err:
        sys.exit(f"llmbook.train: error: {err}")
