"""Long contexts: does a model find what it is asked about equally well anywhere in its prompt?

Liu et al. (2023, "Lost in the Middle: How Language Models Use Long Contexts",
arXiv:2307.03172) found a U-shaped curve: accuracy is highest when the answer sits at the
start or the end of a long prompt and lowest in the middle. This module measures that curve
and what lies behind it:

- :func:`retrieval_contexts` and :func:`kv_contexts`: prompts whose answer is known, each
  asked about *every* record in it, so that the position effect is measured within the same
  contexts (a paired design): TinyWorld's "Records of ..." documents, and Liu et al.'s synthetic
  key-value retrieval (a JSON object of random keys and values).
- :func:`score_positions`: greedy correctness and the answer's log-probability for each
  (context, position), running each context once into a KV cache and each question after it.
- :func:`attention_weights`: the attention probabilities of every layer and head, recomputed
  from the model's own projections (the fused kernel never materializes them), for attention
  sinks (Xiao et al. 2023, arXiv:2309.17453) and for how much a layer reads the answer record.
- :func:`run_positions`: train small retrieval models that differ only in their position
  encoding (RoPE, none, ALiBi, learned absolute) on the same documents and steps, and score
  them inside and beyond the lengths they were trained on. ``python -m llmbook.long_context
  positions`` writes the committed results; ``smollm2`` does the real model's curve.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmbook.device import seed_everything
from llmbook.model import POSITION_ENCODINGS, CausalLM, ModelConfig, alibi_bias, apply_rotary
from llmbook.tokenizer import Tokenizer
from llmbook.train import PackedDataset, TrainConfig, _check_int, train
from llmbook.world import default_splits
from llmbook.world.documents import (
    RETRIEVAL_ATTRIBUTES,
    RetrievalConfig,
    retrieval_header,
    retrieval_question,
    retrieval_record,
    sample_documents,
)

__all__ = [
    "PositionContext", "retrieval_contexts", "queries_and_keys", "kv_contexts", "score_positions", "attention_weights",
    "sink_share", "uniform_sink_share", "document_sink_share", "copy_baseline", "default_guess_rate", "span_share", "training_documents", "record_spans", "attention_to_records", "position_model_config", "train_position_model", "run_positions",
    "run_smollm2", "TRAIN_RECORDS", "EVAL_RECORDS",
]

# The position-encoding models train on documents of TRAIN_RECORDS records (small ones too: with two
# records, copying either value is right half the time, a first step towards matching keys), every
# record recalled, and are scored on EVAL_RECORDS: 16 and 32 lie inside the trained lengths, 96
# (about 300 tokens, half again the longest trained document) beyond them.
TRAIN_RECORDS = (2, 4, 8, 16, 32)
QUESTIONS: int | None = None
EVAL_RECORDS = (16, 32, 64, 96)
# Two layers (the fewest that can form an induction head) of width 64, 4 heads of 16 dimensions:
# about 7 training steps per second on one CPU thread. 512 positions hold the longest scored
# document, so learned absolute positions have an (untrained) vector for every position scored.
POSITION_MODEL = dict(hidden_size=64, intermediate_size=170, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, max_position_embeddings=512, rope_theta=10000.0,
                      rms_norm_eps=1e-5, tie_word_embeddings=True)


# ============================================================================ prompts with known answers
@dataclass(frozen=True)
class PositionContext:
    """A context of records and, for each record, the question about it and its answer.

    ``prompt(i) = context + questions[i]`` and the correct continuation is ``answers[i]``; the
    context is the same text whichever record is asked about.
    """

    context: str
    questions: tuple[str, ...]
    answers: tuple[str, ...]

    @property
    def n_records(self) -> int:
        return len(self.answers)


def retrieval_contexts(kb: Any, n_records: int, n_contexts: int, seed: int, *,
                       random_values: bool = False) -> list[PositionContext]:
    """``n_contexts`` TinyWorld retrieval documents of ``n_records`` records about people of ``kb``.

    Each is the document of the "retrieval" family (``Records of town:`` ...) without its
    question; ``questions[i]`` asks about record i (``Question: What is the town of X?``) and
    ``answers[i]`` is ``" " + value``, as in the training documents. With ``random_values`` each
    record's value is drawn at random from the values the attribute takes in ``kb``, so that
    only the context, never a memory of the person, tells the answer.
    """
    _check_int("n_records", n_records, 1, 1000)
    _check_int("n_contexts", n_contexts, 1)
    enough = [a for a in RETRIEVAL_ATTRIBUTES if len(kb.people_with(a)) >= n_records]
    if not enough:
        raise ValueError(f"n_records={n_records} exceeds the people of every attribute in this knowledge base")
    out = []
    rng = random.Random(f"retrieval-values/{seed}/{n_records}")
    for doc in sample_documents("retrieval", kb, seed, n_contexts, RetrievalConfig(n_records=(n_records,))):
        attribute, names = doc.meta["attribute"], doc.meta["names"]
        label = RETRIEVAL_ATTRIBUTES[attribute]
        values = [str(kb.get(name, attribute)) for name in names]
        if random_values:
            pool = sorted({str(kb.get(p, attribute)) for p in kb.people_with(attribute)})
            values = [rng.choice(pool) for _ in names]
        context = retrieval_header(label) + "".join(retrieval_record(i, n, v) for i, (n, v) in enumerate(zip(names, values)))
        out.append(PositionContext(context, tuple(retrieval_question(label, n) for n in names),
                                   tuple(" " + v for v in values)))
    return out


RECALL_HEADER = "Recall:\n"


def recall_words(tokenizer: Tokenizer) -> tuple[list[str], list[str]]:
    """The keys and values of :func:`recall_contexts`: the vocabulary's one-token words (a space and
    three or more lowercase letters), alternately assigned to keys and values, so the two never mix."""
    words = sorted({w for w in (tokenizer.decode([i]) for i in range(tokenizer.vocab_size))
                    if len(w) >= 4 and w[0] == " " and w[1:].isascii() and w[1:].isalpha() and w[1:].islower()})
    words = [w for w in words if tokenizer.encode(w) == tokenizer.encode(w)[:1]]  # one token on its own too
    return words[0::2], words[1::2]


def recall_contexts(tokenizer: Tokenizer, n_records: int, n_contexts: int, seed: int) -> list[PositionContext]:
    """Associative recall (Arora et al. 2024, "Zoology", arXiv:2312.04927): ``Records:``, then
    ``n_records`` lines `` key value`` of one-token words, distinct keys and random values, then
    ``Recall:``; ``questions[i]`` is record i's key and ``answers[i]`` its value.

    The answer is the token that followed the same key earlier in the context: the task an
    induction head solves (Olsson et al. 2022), learnable from scratch in CPU minutes. Keys are
    single tokens because a multi-token key needs a longer match that small models did not
    learn in that budget (TinyWorld's names, tried first).
    """
    _check_int("n_records", n_records, 1)
    _check_int("n_contexts", n_contexts, 1)
    keys, values = recall_words(tokenizer)
    if n_records > len(keys):
        raise ValueError(f"n_records must be at most {len(keys)} (the distinct one-token keys), got {n_records}")
    rng = random.Random(f"recall/{seed}/{n_records}")
    out = []
    for _ in range(n_contexts):
        ks = rng.sample(keys, n_records)
        vs = [rng.choice(values) for _ in ks]
        context = "Records:\n" + "".join(f"{k}{v}\n" for k, v in zip(ks, vs)) + RECALL_HEADER
        out.append(PositionContext(context, tuple(ks), tuple(vs)))
    return out


KV_INSTRUCTION = "Extract the value corresponding to the specified key in the JSON object below."


def kv_contexts(n_pairs: int, n_contexts: int, seed: int, *, key_chars: int = 8,
                template: Callable[[str, str], tuple[str, str]] | None = None) -> list[PositionContext]:
    """Liu et al.'s synthetic key-value retrieval: a JSON object of random hex keys and values.

    ``n_pairs`` pairs of ``key_chars`` lowercase hex digits each (Liu et al. use 36-character
    UUIDs; shorter keys fit more pairs into a CPU's budget). ``template(json_text, key)``
    returns (context, question) to wrap them, e.g. in a chat template; by default the context is
    the instruction and the JSON object, the question ``Key: "<key>"\\nCorresponding value:``,
    and the answer ``" " + value``.
    """
    _check_int("n_pairs", n_pairs, 1, 10_000)
    _check_int("n_contexts", n_contexts, 1)
    _check_int("key_chars", key_chars, 4, 64)
    rng = random.Random(f"kv/{seed}/{n_pairs}/{key_chars}")
    out = []
    for _ in range(n_contexts):
        keys: list[str] = []
        while len(keys) < n_pairs:
            key = "".join(rng.choice("0123456789abcdef") for _ in range(key_chars))
            if key not in keys:
                keys.append(key)
        values = ["".join(rng.choice("0123456789abcdef") for _ in range(key_chars)) for _ in keys]
        body = "{" + ", ".join(f'"{k}": "{v}"' for k, v in zip(keys, values)) + "}"
        if template is None:
            context = f"{KV_INSTRUCTION}\n\nJSON data:\n{body}\n\n"
            questions = tuple(f'Key: "{k}"\nCorresponding value:' for k in keys)
            answers = tuple(f' "{v}"' for v in values)
        else:
            pairs = [template(body, k) for k in keys]
            if len({c for c, _ in pairs}) != 1:
                raise ValueError("template must return the same context for every key of one JSON object")
            context, questions = pairs[0][0], tuple(q for _, q in pairs)
            answers = tuple(values)
        out.append(PositionContext(context, questions, answers))
    return out


# ============================================================================ scoring
@torch.no_grad()
def score_positions(model: CausalLM, tokenizer: Tokenizer, contexts: Sequence[PositionContext], *,
                    add_bos: bool = True, allow_extrapolation: bool = False) -> dict[str, Any]:
    """Greedy correctness and answer log-probability of every (context, record) pair.

    For each context the tokens every question shares (the context, up to where the
    questions' tokenizations part) run once into a KV cache; each question and its answer then
    run after them, teacher-forced. A record counts as correct when every answer token is the
    argmax of the logits before it, i.e. greedy decoding would write the answer (and what
    follows it is not judged). Returns ``correct`` and ``logprob`` (nats, summed over the answer's
    tokens), each a list over contexts of lists over records, and ``tokens``, each context's
    length in tokens with its longest question.
    """
    if not isinstance(model, CausalLM):
        raise ValueError(f"model must be a llmbook CausalLM, got {type(model).__name__}")
    model.eval()
    correct, logprob, lengths = [], [], []
    for c in contexts:
        prompts = [tokenizer.encode(c.context + q, add_bos=add_bos) for q in c.questions]
        full = [tokenizer.encode(c.context + q + a, add_bos=add_bos) for q, a in zip(c.questions, c.answers)]
        for p, f, a in zip(prompts, full, c.answers):
            if f[: len(p)] != p or len(f) == len(p):
                raise ValueError(f"the answer {a!r} does not tokenize as a continuation of its prompt")
        shared = min(len(p) for p in prompts)
        for p in prompts:  # the longest prefix every prompt has in common
            shared = next((i for i in range(shared) if p[i] != prompts[0][i]), shared)
        shared = min(shared, min(len(p) for p in prompts) - 1)  # each question keeps at least one token
        longest = max(len(f) for f in full)
        cache = model.new_cache(1, longest, allow_extrapolation=allow_extrapolation)
        if shared > 0:
            model(torch.tensor([prompts[0][:shared]], device=model.device), cache=cache)
        row_correct, row_logprob = [], []
        for p, f in zip(prompts, full):
            cache.truncate(shared)
            logits = model(torch.tensor([f[shared:-1]], device=model.device),
                           cache=cache)[0].float()  # (T, V)
            answer = torch.tensor(f[len(p):], device=logits.device)
            scores = logits[len(p) - 1 - shared:]  # the logits that predict the answer's tokens
            row_correct.append(bool((scores.argmax(-1) == answer).all()))
            row_logprob.append(float(torch.log_softmax(scores, -1).gather(1, answer[:, None]).sum()))
        correct.append(row_correct)
        logprob.append(row_logprob)
        lengths.append(longest)
    return {"correct": correct, "logprob": logprob, "tokens": lengths}


def default_guess_rate(model: CausalLM, tokenizer: Tokenizer, contexts: Sequence[PositionContext], record: int, *,
                       add_bos: bool = True) -> dict[str, Any]:
    """How often greedy decoding writes record ``record``'s value (1-based) when asked about a
    *different* record whose value differs: a model that falls back on one record when unsure
    scores that record well without reading it better. Returns ``rate`` and ``n`` (questions)."""
    if not contexts:
        raise ValueError("contexts must not be empty")
    _check_int("record", record, 1, min(c.n_records for c in contexts))
    as_if = [PositionContext(c.context, c.questions, (c.answers[record - 1],) * c.n_records) for c in contexts]
    scored = score_positions(model, tokenizer, as_if, add_bos=add_bos)["correct"]
    hits = [ok for c, row in zip(contexts, scored) for i, ok in enumerate(row)
            if i != record - 1 and c.answers[i] != c.answers[record - 1]]
    return {"record": record, "rate": sum(hits) / len(hits), "n": len(hits)}


def accuracy_by_position(correct: Sequence[Sequence[bool]]) -> dict[str, list[float]]:
    """Per record position: the accuracy over contexts and its binomial standard error, and n."""
    n = len(correct)
    if n == 0 or len({len(r) for r in correct}) != 1:
        raise ValueError("correct must be a non-empty list of equally long lists (contexts x records)")
    acc = [sum(r[i] for r in correct) / n for i in range(len(correct[0]))]
    return {"accuracy": acc, "se": [math.sqrt(p * (1 - p) / n) for p in acc], "n": n}


# ============================================================================ attention probabilities
def _linear32(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` computed in float32, leaving the layer's own dtype alone."""
    bias = None if layer.bias is None else layer.bias.float()
    return torch.nn.functional.linear(x, layer.weight.float(), bias)


@torch.no_grad()
def queries_and_keys(model: CausalLM, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every layer's queries and keys (L, H, T, d), float32, as attention multiplies them: after
    RoPE (for a RoPE model), each key head repeated for the query heads that share it.

    Hooks capture each layer's attention input during one forward pass of the unpadded
    sequence ``input_ids`` (1, T); q and k are recomputed with the layer's own projections.
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or input_ids.shape[0] != 1:
        raise ValueError("input_ids must be a (1, T) tensor: one unpadded sequence")
    t = input_ids.shape[1]
    captured: list[torch.Tensor] = []
    hooks = [layer.self_attn.register_forward_pre_hook(lambda _m, args: captured.append(args[0].float()))
             for layer in model.model.layers]
    try:
        model(input_ids)
    finally:
        for h in hooks:
            h.remove()
    queries, keys = [], []
    for layer, x in zip(model.model.layers, captured):
        attn = layer.self_attn
        q = _linear32(attn.q_proj, x).view(1, t, attn.num_heads, attn.head_dim).transpose(1, 2)  # (1, H, T, d)
        k = _linear32(attn.k_proj, x).view(1, t, attn.num_kv_heads, attn.head_dim).transpose(1, 2)
        k = k.repeat_interleave(attn.num_heads // attn.num_kv_heads, dim=1)  # (1, H, T, d)
        if model.config.position_encoding == "rope":
            cos, sin = model.model.rotary_emb(None, 0, t, torch.float32)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        queries.append(q[0])
        keys.append(k[0])
    return torch.stack(queries), torch.stack(keys)


@torch.no_grad()
def attention_weights(model: CausalLM, input_ids: torch.Tensor) -> torch.Tensor:
    """Attention probabilities (L, H, T, T) of one unpadded sequence ``input_ids`` (1, T), float32.

    Recomputed from :func:`queries_and_keys`, the model's position encoding and the causal mask,
    as softmax(q k^T / sqrt(d) + bias); their product with v is what the fused kernel returns.
    """
    queries, keys = queries_and_keys(model, input_ids)  # (L, H, T, d)
    config, t = model.config, queries.shape[2]
    positions = torch.arange(t, device=queries.device)[None]  # (1, T)
    causal = positions[:, None, :, None] >= positions[:, None, None, :]  # (1, 1, T, T)
    scores = queries @ keys.transpose(-1, -2) / math.sqrt(config.head_dim)  # (L, H, T, T)
    if config.position_encoding == "alibi":  # the model's own bias, -inf where masked
        return torch.softmax(scores + alibi_bias(model.model.alibi_slopes, positions, positions, causal,
                                                 torch.float32).to(scores.device), dim=-1)
    return torch.softmax(scores.masked_fill(~causal[0], float("-inf")), dim=-1)


def sink_share(weights: torch.Tensor, first_query: int = 1) -> torch.Tensor:
    """(L, H): the mean attention on position 0 over queries ``first_query`` .. T-1.

    Query 0 can only attend to itself, so it is left out by default. A uniform head's share
    would be the mean of 1/(i+1) over those queries.
    """
    if weights.ndim != 4 or weights.shape[-1] != weights.shape[-2]:
        raise ValueError(f"weights must have shape (L, H, T, T), got {tuple(weights.shape)}")
    _check_int("first_query", first_query, 0, weights.shape[-1] - 1)
    return weights[:, :, first_query:, 0].mean(dim=-1)


def uniform_sink_share(length: int, first_query: int = 1) -> float:
    """What :func:`sink_share` gives for a head attending uniformly over a ``length``-token
    sequence: the mean of 1/(i+1) over queries ``first_query`` .. length-1."""
    _check_int("length", length, 2)
    _check_int("first_query", first_query, 0, length - 1)
    return sum(1 / (i + 1) for i in range(first_query, length)) / (length - first_query)


def document_sink_share(weights: torch.Tensor, input_ids: Sequence[int], bos_token_id: int) -> torch.Tensor:
    """(L, H): the mean attention each query pays to the BOS that opens its own document, for a
    window packing several ``[BOS] ...`` documents; queries at a BOS are left out."""
    ids = torch.as_tensor(list(input_ids))
    if weights.ndim != 4 or weights.shape[-1] != len(ids):
        raise ValueError(f"weights must have shape (L, H, T, T) with T = len(input_ids) = {len(ids)}")
    position = torch.arange(len(ids))
    opening = torch.cummax(torch.where(ids == bos_token_id, position, 0), dim=0).values  # own BOS
    later = position != opening
    return weights.cpu()[:, :, position, opening][:, :, later].mean(dim=-1)


def copy_baseline(contexts: Sequence[PositionContext]) -> float:
    """Accuracy of answering with the value of a uniformly drawn record of the context: the share
    of a context's records whose value equals the asked one, averaged over every question."""
    shares = [c.answers.count(a) / c.n_records for c in contexts for a in c.answers]
    if not shares:
        raise ValueError("contexts must hold at least one question")
    return sum(shares) / len(shares)


def span_share(weights: torch.Tensor, query: int, start: int, stop: int) -> torch.Tensor:
    """(L, H): the attention of ``query`` on the key positions [start, stop)."""
    if weights.ndim != 4:
        raise ValueError(f"weights must have shape (L, H, T, T), got {tuple(weights.shape)}")
    t = weights.shape[-1]
    _check_int("query", query, 0, t - 1)
    if not 0 <= start < stop <= query + 1:
        raise ValueError(f"need 0 <= start < stop <= query + 1, got start={start}, stop={stop}, query={query}")
    return weights[:, :, query, start:stop].sum(dim=-1)


def record_spans(tokenizer: Tokenizer, context: PositionContext, *, add_bos: bool = True) -> list[tuple[int, int]]:
    """The token span [start, stop) of each record line (lines 2 .. n+1) of a :func:`retrieval_contexts`
    or :func:`recall_contexts` context.

    Raises ``ValueError`` if a line boundary falls inside a token (then no span is exact).
    """
    full = tokenizer.encode(context.context, add_bos=add_bos)
    lines = context.context.splitlines(keepends=True)
    bounds, offset = [], 0
    for line in lines:
        offset += len(line)
        ids = tokenizer.encode(context.context[:offset], add_bos=add_bos)
        if full[: len(ids)] != ids:
            raise ValueError(f"a line boundary at character {offset} splits a token")
        bounds.append(len(ids))
    return [(bounds[i], bounds[i + 1]) for i in range(context.n_records)]  # line 0 is the header


@torch.no_grad()
def attention_to_records(model: CausalLM, tokenizer: Tokenizer, contexts: Sequence[PositionContext]) -> dict[str, Any]:
    """For each record position i: the attention the question's last token pays to record i's line,
    per layer (mean over heads and ``contexts``) when record i is asked about; and each layer and
    head's attention on the first token (BOS), averaged over the contexts' tokens."""
    n = contexts[0].n_records
    to_record = torch.zeros(n, model.config.num_hidden_layers)
    sinks = torch.zeros(model.config.num_hidden_layers, model.config.num_attention_heads)
    for c in contexts:
        spans = record_spans(tokenizer, c)
        for i, (start, stop) in enumerate(spans):
            ids = torch.tensor([tokenizer.encode(c.context + c.questions[i], add_bos=True)], device=model.device)
            weights = attention_weights(model, ids)
            to_record[i] += span_share(weights, ids.shape[1] - 1, start, stop).mean(dim=1).cpu()
            if i == 0:
                sinks += sink_share(weights).cpu()
    return {"to_record": (to_record / len(contexts)).tolist(), "sink": (sinks / len(contexts)).tolist(),
            "n_contexts": len(contexts)}


# ============================================================================ position-encoding models
def position_model_config(encoding: str, vocab_size: int, **overrides: Any) -> dict[str, Any]:
    """The ModelConfig fields of the small retrieval model with position encoding ``encoding``."""
    if encoding not in POSITION_ENCODINGS:
        raise ValueError(f"encoding must be one of {list(POSITION_ENCODINGS)}, got {encoding!r}")
    fields = {**POSITION_MODEL, "vocab_size": vocab_size, "position_encoding": encoding, **overrides}
    ModelConfig(**fields)  # validated now, not after the data is built
    return fields


def training_documents(tokenizer: Tokenizer, n_docs: int, seed: int, records: tuple[int, ...] = TRAIN_RECORDS,
                       questions: int | None = QUESTIONS) -> tuple[list[list[int]], list[list[int]]]:
    """``n_docs`` recall documents (:func:`recall_contexts`), as ``[BOS] ... [EOS]`` token ids, and
    loss masks that are 1 on the answers and the final EOS only.

    Record counts cycle through ``records``; each document recalls ``questions`` distinct,
    uniformly drawn records in random order, one line each (`` key value``); None: every record.
    """
    if questions is not None:
        _check_int("questions", questions, 1, min(records))
    rng = random.Random(f"retrieval-targets/{seed}")
    per_size = -(-n_docs // len(records))
    contexts = [c for i, n in enumerate(records)
                for c in recall_contexts(tokenizer, n, per_size, seed + 1000 * i)]
    random.Random(f"retrieval-order/{seed}").shuffle(contexts)
    docs, masks = [], []
    for c in contexts[:n_docs]:
        text, ids = c.context, tokenizer.encode(c.context, add_bos=True)
        mask = [0] * len(ids)
        for k, i in enumerate(rng.sample(range(c.n_records), questions or c.n_records)):
            for piece, target in ((("\n" if k else "") + c.questions[i], 0), (c.answers[i], 1)):
                text += piece
                piece_ids = tokenizer.encode(piece)
                ids, mask = ids + piece_ids, mask + [target] * len(piece_ids)
        if ids != tokenizer.encode(text, add_bos=True):  # the pieces' tokens must be the document's
            raise ValueError(f"a question or answer does not tokenize on its own as inside {text!r}")
        docs.append(ids + [tokenizer.eos_token_id])
        masks.append(mask + [1])
    return docs, masks


def train_position_model(encoding: str, tokenizer: Tokenizer, docs: Sequence[Sequence[int]],
                         loss_masks: Sequence[Sequence[int]], *, steps: int, batch_size: int, lr: float,
                         seed: int = 0, progress: bool = False) -> tuple[CausalLM, dict[str, Any]]:
    """Train the small retrieval model of :data:`POSITION_MODEL` with ``encoding`` from scratch on
    ``docs``, one per window.

    Every document starts its own window at position 0 and the rest of the window is padding
    that is never a target, so the model sees no position beyond its longest document: what
    lies further is extrapolation. The loss counts the tokens ``loss_masks`` marks (the answers,
    see :func:`training_documents`); AdamW, warm-up then cosine decay (:func:`llmbook.train.train`).
    Returns the model and a record of the run.
    """
    fields = position_model_config(encoding, tokenizer.vocab_size)
    longest = max(len(d) for d in docs)
    # Padding every document to the longest (never a target, never attended by a real token under
    # the causal mask) puts each in a window of its own, starting at position 0.
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    padded = [list(d) + [pad] * (longest - len(d)) for d in docs]
    masks = [list(m) + [0] * (longest - len(d)) for d, m in zip(docs, loss_masks)]
    dataset = PackedDataset(padded, longest - 1, seed=seed, loss_masks=masks, vocab_size=tokenizer.vocab_size,
                            pack="documents", pad_id=pad)
    if len(dataset) != len(docs):
        raise ValueError("two documents shared a window; each must start at position 0")
    config = TrainConfig(model=fields, seq_len=longest - 1, batch_size=batch_size, lr=lr, min_lr=lr / 10,
                         warmup_steps=max(1, steps // 20), max_steps=steps, weight_decay=0.1, eval_every=steps,
                         checkpoint_every=steps, seed=seed, pack="documents", schedule="cosine", dtype="float32")
    seed_everything(seed)
    t0 = time.perf_counter()
    result = train(config, dataset, None, tokenizer=tokenizer, progress=progress)
    losses = [h["train_loss"] for h in result.history]
    record = {"encoding": encoding, "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
              "longest_trained_tokens": longest, "parameters": result.model.num_parameters(),
              "train_seconds": time.perf_counter() - t0, "loss_every_25": losses[::25],
              "train_loss_last_25": sum(losses[-25:]) / len(losses[-25:])}
    return result.model.eval(), record


def run_positions(tokenizer: Tokenizer, *, encodings: Sequence[str] = POSITION_ENCODINGS, steps: int = 3000,
                  batch_size: int = 16, lr: float = 5e-3, seed: int = 0, n_contexts: int = 64,
                  train_records: tuple[int, ...] = TRAIN_RECORDS, eval_records: Sequence[int] = EVAL_RECORDS,
                  questions: int | None = QUESTIONS, n_attention: int = 16, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The experiment: one model per position encoding, same documents, steps and seed; each
    scored on ``n_contexts`` fresh recall documents (:func:`recall_contexts`) of each of ``eval_records`` records,
    every record asked about (:func:`score_positions`), and on the first ``n_attention`` of them
    the attention to each record and to the first token (:func:`attention_to_records`)."""
    for e in encodings:
        if e not in POSITION_ENCODINGS:
            raise ValueError(f"encodings must be names from {list(POSITION_ENCODINGS)}, got {e!r}")
    _check_int("steps", steps, 1)
    _check_int("batch_size", batch_size, 1)
    _check_int("n_contexts", n_contexts, 1)
    docs, masks = training_documents(tokenizer, steps * batch_size, seed, tuple(train_records), questions)
    contexts = {n: recall_contexts(tokenizer, n, n_contexts, seed + 1) for n in eval_records}
    out: dict[str, Any] = {"train_records": list(train_records), "eval_records": list(eval_records),
                           "questions_per_document": questions, "n_contexts": n_contexts,
                           "model": POSITION_MODEL, "runs": {}}
    for e in encodings:
        model, record = train_position_model(e, tokenizer, docs, masks, steps=steps, batch_size=batch_size, lr=lr,
                                             seed=seed)
        log(f"{e}: trained {record['train_seconds']:.0f} s, final loss {record['train_loss_last_25']:.3f}")
        record["scores"], record["attention"] = {}, {}
        for n, cs in contexts.items():
            s = score_positions(model, tokenizer, cs)
            record["scores"][str(n)] = {**s, **accuracy_by_position(s["correct"])}
            record["attention"][str(n)] = attention_to_records(model, tokenizer, cs[:n_attention])
            log(f"  {n} records: accuracy {sum(map(sum, s['correct'])) / (n * len(cs)):.3f}")
        out["runs"][e] = record
    return out


# ============================================================================ the real model
def run_smollm2(model: CausalLM, tokenizer: Tokenizer, words: Tokenizer, *, records: Sequence[int] = (16, 32, 64, 100),
                pairs: Sequence[int] = (10, 25), n_contexts: int = 48, kv_contexts_n: int = 16, seed: int = 0,
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """SmolLM2's accuracy by position on two tasks, and its attention on the first token.

    ``recall``: :func:`recall_contexts` with ``records`` records (keys and values are the one-token
    words of ``words``, TinyWorld's tokenizer; SmolLM2 reads them as text). ``kv``: Liu et al.'s
    key-value retrieval (:func:`kv_contexts`) with ``pairs`` pairs, in their completion prompt: in
    its chat template the instruct model restates the key ("The value corresponding to the key
    ...") instead of answering. ``sink``: the first-token share by layer and head
    (:func:`sink_share`) on the first recall prompt of the most records.
    """
    _check_int("n_contexts", n_contexts, 2)
    _check_int("kv_contexts_n", kv_contexts_n, 2)
    out: dict[str, Any] = {"records": list(records), "pairs": list(pairs), "n_contexts": n_contexts,
                           "kv_contexts": kv_contexts_n, "key_chars": 8,
                           "recall": {}, "kv": {},
                           "config": {k: getattr(model.config, k) for k in (
                               "rope_theta", "head_dim", "max_position_embeddings", "num_hidden_layers",
                               "num_attention_heads", "num_key_value_heads", "hidden_size")}}
    tasks = [("recall", n, lambda n: recall_contexts(words, n, n_contexts, seed)) for n in records]
    tasks += [("kv", n, lambda n: kv_contexts(n, kv_contexts_n, seed)) for n in pairs]
    for task, n, make in tasks:
        t0 = time.perf_counter()
        s = score_positions(model, tokenizer, make(n), add_bos=False)
        out[task][str(n)] = {**s, **accuracy_by_position(s["correct"]), "seconds": time.perf_counter() - t0}
        log(f"{task} {n} ({max(s['tokens'])} tokens): accuracy {sum(map(sum, s['correct'])) / (n * len(s['correct'])):.3f}")
    # Is the first record better read, or a default answer? Compared with a middle record.
    probe = recall_contexts(words, min(records), n_contexts, seed)
    out["guesses"] = {"records": min(records), **{str(r): default_guess_rate(model, tokenizer, probe, r, add_bos=False)
                                                  for r in (1, min(records) // 2)}}
    first = recall_contexts(words, max(records), 1, seed)[0]
    ids = tokenizer.encode(first.context + first.questions[0], add_bos=False)
    weights = attention_weights(model, torch.tensor([ids], device=model.device))
    out["sink"] = {"tokens": len(ids), "first_token": tokenizer.decode(ids[:1]), "share": sink_share(weights).tolist()}
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llmbook.long_context", description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("positions", help="train one small retrieval model per position encoding and score them")
    a.add_argument("--out", required=True)
    a.add_argument("--encodings", default=",".join(POSITION_ENCODINGS))
    a.add_argument("--steps", type=int, default=3000)
    a.add_argument("--batch-size", type=int, default=16)
    a.add_argument("--lr", type=float, default=5e-3)
    a.add_argument("--contexts", type=int, default=64)
    b = sub.add_parser("smollm2", help="SmolLM2-135M-Instruct's accuracy by key position")
    b.add_argument("--out", required=True)
    b.add_argument("--records", default="16,32,64,100")
    b.add_argument("--pairs", default="10,25")
    b.add_argument("--contexts", type=int, default=48, help="recall documents per size")
    b.add_argument("--kv-contexts", type=int, default=16, help="key-value objects per size")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from llmbook.hub import ASSETS_DIR, REAL_MODEL, load  # noqa: PLC0415 - only the commands need the assets

    args = _parser().parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.command == "positions":
        _, tokenizer = load(ASSETS_DIR / "tinyworld-main")
        encodings = [e.strip() for e in args.encodings.split(",") if e.strip()]
        result = run_positions(tokenizer, encodings=encodings, steps=args.steps, batch_size=args.batch_size,
                               lr=args.lr, n_contexts=args.contexts)
    else:
        model, tokenizer = load(REAL_MODEL)
        _, words = load(ASSETS_DIR / "tinyworld-main")
        result = run_smollm2(model, tokenizer, words, records=[int(x) for x in args.records.split(",")],
                             pairs=[int(x) for x in args.pairs.split(",")], n_contexts=args.contexts,
                             kv_contexts_n=args.kv_contexts)
    Path(args.out).write_text(json.dumps(result) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
