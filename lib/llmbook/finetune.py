"""What LoRA's rank does: fine-tune TinyWorld-main on new facts at several ranks and in full, and measure.

The chapter *What LoRA's rank does* reads the committed results of these commands::

    python -m llmbook.finetune lora-ranks --out lib/llmbook/assets/results/lora_ranks.json
    python -m llmbook.finetune lora-ranks --out lib/llmbook/assets/results/lora_ranks_16.json \
        --n-people 16 --n-val-people 4 --ranks 8 --lora-lrs 3e-4 1e-3 --full-lrs 1e-4 3e-4 \
        --no-rows --no-control
    python -m llmbook.finetune lora-ranks --out lib/llmbook/assets/results/lora_ranks_rows_first.json \
        --ranks 1 8 64 --no-full --no-rows --no-control --rows-first 1e-2
    python -m llmbook.finetune smollm2 --out lib/llmbook/assets/results/lora_smollm2.json

(``reselect --results FILE`` chooses a result file's winners again with today's rule, without
training: the committed ``lora_ranks.json`` was trained before the forgetting budget was added to
the rule, and re-selected with it.)

**The new knowledge.** TinyWorld keeps two groups of people out of the training corpus: the
"new" people (kept for fine-tuning) and the "held-out" people (kept for evaluation); neither name
ever appears in training. From both groups (80 people), a seeded draw picks the people taught,
five facts each (town, job, age, pet, favourite food; friendships are left out because a friend
question has several right answers). The default teaches all 80 (400 facts) in 300 steps of 16
documents, 12 passes over each fact: a short budget, in which no method learns everything, so
that ranks can differ (with 16 people and 60 passes, both LoRA and full fine-tuning recall nearly
every fact).

**Never-seen tokens.** The names are spelled with tokens no pretraining document contains; their
embedding rows are near copies of each other (cosine ~0.998), so with the embedding frozen no
adapter can tell the people apart. Every LoRA run therefore also trains the embedding rows of the
names' tokens (:func:`_train_token_rows`, PEFT's Trainable Tokens); a control run (LoRA at
:data:`CONTROL_RANK` with the embedding frozen) and runs of the rows alone show what that changes.

**The data** (:func:`new_knowledge_data`). Each fact is one document in the corpus's fact
format, ``Mira lives in Tolbury.``, with the loss on the tokens after the subject (``lives in Tolbury.`` and the
EOS; not the subject's name, which a question supplies): knowledge injection by fine-tuning on
statements. Each training window holds exactly one document (:data:`DEFAULT_SEQ_LEN` is shorter
than two documents): packed together, documents that always share a window let the model learn a
fact from the documents before it, which a question does not supply (a pilot with packed windows
reached a training loss of 0.02 nats/token and recalled 1 of 60 facts on their own). The people are split, by a seeded draw, into *validation*
people (their facts choose the learning rate) and *test* people (their facts are the reported
numbers). Every method sees the same documents in the same order for the same number of steps:
a matched budget.

**The measurements** (:func:`score_model`), each a rate with its n and standard error, before and
after fine-tuning; every item is a greedy continuation graded as the model card grades fact
completions (the first sentence must be the expected template of the world's grammar, and true):

- *learn*: the fine-tuning sentence up to its value, ``Mira lives in`` -> `` Tolbury.``, for the
  test people's facts;
- *generalize*, two distances from the fine-tuning phrasing: the corpus's QA format with the
  answer's opening given (``Question: Where does Mira live?\nAnswer: Mira lives in``), and the
  story family's phrasings (``Mira loves to eat``, ``The favourite food of Mira is``, ``Mira is a``
  (job and town), ``Every morning, Mira feeds`` (the pet); :data:`GENERALIZE_PHRASINGS`). Neither
  occurs in the fine-tuning documents; both occur in the pretraining corpus about training people,
  so the model knows the phrasing, not these people. The base model's rate on the story phrasings
  about *training* people is the reference of what transfer across phrasings looks like for facts
  it knows. ``qa_strict`` asks the bare question (the answer must also spell the new name);
- *forget*: accuracy on questions about training facts (``qa_seen``, the model card's suite), and
  the change in nats per token on held-out documents of every family: the entropy gap above the
  generator's floor, after minus before (the floor is the same documents' exact entropy, so the
  change in gap is the change in the model's loss; its standard error pairs each document's
  before and after).

**The learning-rate sweep.** Rank and learning rate interact (the update of A and B is scaled by
alpha / r, and a rank-r update has r directions to move in), so every method gets its own grid,
a factor ~3 apart, from a rate that barely moves the model to one that breaks it. In a fixed
budget learning rises with the rate until the model breaks, so the winner of each method
(:func:`choose_winner`) has the best *validation* learn accuracy among the runs whose loss on a
second, validation set of held-out documents rose by at most :data:`FORGET_BUDGET` nats per token;
rates within one standard error of it count as ties, broken towards the least forgetting. Every
run of the sweep is recorded, so the chapter can compare methods along their learn-forget curves.

**ΔW.** For every run the update of each targeted matrix is analysed (:func:`delta_analysis`):
its top singular values, ‖ΔW‖_* / ‖ΔW‖_F (at most √rank, by Cauchy-Schwarz) and the stable rank
‖ΔW‖_F² / ‖ΔW‖_2² (at most the rank). For LoRA, ΔW = (alpha / r) B A; for full fine-tuning,
ΔW = W_fine-tuned − W_base of the same matrices (weight decay is 0 in every run, so ΔW holds the
learned update only).
"""

from __future__ import annotations

import argparse
import copy
import math
import json
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmbook.device import pick_device
from llmbook.lora import LORA_TARGETS, LoraConfig, add_lora, lora_layers, trainable_parameter_count
from llmbook.model import CausalLM
from llmbook.text_stats import rate_with_se, ratio_with_se
from llmbook.tokenizer import Tokenizer
from llmbook.train import PackedDataset, TrainConfig, _check_int, train
from llmbook.world import default_splits
from llmbook.world.checkers import check_qa, check_statement
from llmbook.world.documents import fact_values, render_fact
from llmbook.world.evaluate import complete, document_nll, entropy_report, heldout_documents
from llmbook.world.grammar import FACT_TEMPLATES, QUESTION_TEMPLATES, parse_sentence
from llmbook.world.lexicon import seeded_rng
from llmbook.world.splits import Splits, evaluation_suites

__all__ = ["QA_KINDS", "GENERALIZE_PHRASINGS", "DEFAULT_RANKS", "DEFAULT_LORA_LRS", "DEFAULT_FULL_LRS",
           "KNOWN_FACTS", "NewKnowledge", "new_knowledge_data", "encode_texts", "name_token_ids", "one_document_per_window", "finetune",
           "score_model", "delta_analysis", "choose_winner", "select_winners", "reselect", "run_lora_ranks", "run_smollm2", "main"]

#: The attributes taught and asked about (QUESTION_TEMPLATES' person kinds, friends left out).
QA_KINDS = ("town", "job", "age", "pet", "food")
#: Held-out phrasings for *generalize*: name -> (prompt template, the story template the first
#: sentence must match). None of them is in the fine-tuning data; all are in the pretraining corpus
#: (stories about training people), so the base model knows the phrasing, not these people.
GENERALIZE_PHRASINGS: dict[str, tuple[str, str]] = {
    "food_loves": ("{person} loves to eat", "story_food_loves"),
    "food_favourite": ("The favourite food of {person} is", "story_food_favourite"),
    "job_and_town": ("{person} is a", "intro_is"),
    "pet_feeds": ("Every morning, {person} feeds", "story_pet_feeds"),
}
DEFAULT_RANKS = (1, 2, 4, 8, 16, 32, 64)
# Grids a factor ~3 apart, from a rate that barely moves the model to one that breaks it (pilot
# runs with the default data: LoRA with the name rows at r = 8 and 64 learned at 1e-3 and 3e-3;
# full fine-tuning broke the model at 1e-3). Whether a winner sits at the edge of its grid is
# recorded.
DEFAULT_LORA_LRS = (3e-4, 1e-3, 3e-3, 1e-2)
DEFAULT_FULL_LRS = (1e-4, 3e-4, 1e-3)
#: Only the names' embedding rows (no adapters): what the rows alone can store.
DEFAULT_ROWS_LRS = (1e-2, 3e-2, 1e-1)
#: The control: LoRA at this rank with the embedding frozen, as in a plain LoRA set-up.
CONTROL_RANK = 8
#: The most a chosen run may forget: nats per token of loss added on the validation held-out
#: documents (0.1 nats is a perplexity about 10.5% higher).
FORGET_BUDGET = 0.1
SELECTION_RULE = ("best validation learn among runs within forget_budget on the validation held-out documents; "
                  "within one SE of the best, the least forgetting; none within budget: the least forgetting")
DEFAULT_STEPS = 300
DEFAULT_BATCH = 16
DEFAULT_SEQ_LEN = None  # the longest document: every window holds one document
DEFAULT_PEOPLE = None  # all 80
DEFAULT_VAL_PEOPLE = 16
ALPHA_OVER_R = 2.0  # lora_alpha = 2 r, so alpha / r = 2 at every rank (as Biderman et al. 2024)


def _check_lrs(name: str, values: Any) -> tuple[float, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ValueError(f"{name} must be a non-empty sequence of learning rates in (0, 1), got {values!r}")
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 < v < 1:
            raise ValueError(f"{name}[{i}] must be a learning rate in (0, 1), got {v!r}")
    if len(set(values)) != len(values):
        raise ValueError(f"{name} must not repeat a value, got {list(values)}")
    return tuple(float(v) for v in values)


# ============================================================================ data
@dataclass(frozen=True)
class NewKnowledge:
    """The fine-tuning documents and the evaluation items of the experiment.

    Items are ``(name, prompt, graded prefix, expected template)``: the model continues the prompt
    greedily, and the first sentence of prefix + continuation must be that template and true.
    """

    people: tuple[str, ...]  # every person taught (new + held-out people of the split)
    val_people: tuple[str, ...]
    test_people: tuple[str, ...]
    train_texts: tuple[str, ...]  # one fact sentence per document: "Mira lives in Tolbury."
    val_items: tuple[tuple[str, str, str, str], ...]  # learn, validation people: "Mira lives in" -> " Tolbury."
    test_items: tuple[tuple[str, str, str, str], ...]  # learn, test people
    generalize_qa: tuple[tuple[str, str, str, str], ...]  # "Question: Where does Mira live?\nAnswer: Mira lives in"
    generalize: tuple[tuple[str, str, str, str], ...]  # the story phrasings, test people
    generalize_reference: tuple[tuple[str, str, str, str], ...]  # the story phrasings about training people
    test_questions: tuple[str, ...]  # the bare questions about the test people (strict QA: the name must be spelled too)

    def summary(self) -> dict[str, Any]:
        return {"n_people": len(self.people), "n_val_people": len(self.val_people),
                "n_test_people": len(self.test_people), "n_train_documents": len(self.train_texts),
                "n_val_questions": len(self.val_items), "n_test_questions": len(self.test_items),
                "n_generalize_qa": len(self.generalize_qa), "n_generalize": len(self.generalize),
                "n_generalize_reference": len(self.generalize_reference), "kinds": list(QA_KINDS),
                "generalize_phrasings": {k: v[0] for k, v in GENERALIZE_PHRASINGS.items()},
                "example_document": self.train_texts[0], "example_learn_prompt": self.test_items[0][1],
                "example_generalize_qa_prompt": self.generalize_qa[0][1],
                "example_generalize_prompts": [g[1] for g in self.generalize[: len(GENERALIZE_PHRASINGS)]]}


def _question(kb, person: str, kind: str) -> str:
    return f"Question: {QUESTION_TEMPLATES[kind].render(**fact_values(kb, person))}\nAnswer:"


def _opening(kb, person: str, kind: str) -> tuple[str, str]:
    """The fact sentence and its opening up to the value: ("Mira lives in Tolbury.", "Mira lives in")."""
    sentence = render_fact(kb, person, kind)
    return sentence, sentence[: FACT_TEMPLATES[kind].value_start(sentence)].rstrip()


def _learn_items(kb, persons: Sequence[str]) -> tuple[tuple[str, str, str, str], ...]:
    """"Mira lives in" -> " Tolbury.": the fine-tuning sentence up to its value."""
    return tuple((k, _opening(kb, p, k)[1], _opening(kb, p, k)[1], FACT_TEMPLATES[k].name)
                 for p in persons for k in QA_KINDS)


def _qa_items(kb, persons: Sequence[str]) -> tuple[tuple[str, str, str, str], ...]:
    """The corpus's QA format with the answer's opening given: the item asks for the fact, not for
    spelling a name the model has seen only in fine-tuning."""
    return tuple((k, f"{_question(kb, p, k)} {_opening(kb, p, k)[1]}", _opening(kb, p, k)[1],
                  FACT_TEMPLATES[k].name) for p in persons for k in QA_KINDS)


def new_knowledge_data(splits: Splits, seed: int = 0, n_val_people: int = DEFAULT_VAL_PEOPLE,
                       n_people: int | None = DEFAULT_PEOPLE) -> NewKnowledge:
    """Facts about people no training document names, as one-sentence documents, and the test items.

    The people are the split's new and held-out people (80, none in the training corpus), shuffled
    with ``seed``; the first ``n_people`` (None: all) are taught, ``n_val_people`` of them choose the
    learning rate and the rest are the test people.
    """
    if not isinstance(splits, Splits):
        raise ValueError(f"splits must be a Splits, got {type(splits).__name__}")
    kb = splits.kb
    everyone = sorted(set(splits.new_people) | set(splits.heldout_people))
    everyone = [p for p in everyone if all(kb.has(p, a) for a in ("town", "job", "age", "pet_species", "pet_name", "food"))]
    if n_people is not None:
        _check_int("n_people", n_people, 2, len(everyone))
    total = len(everyone) if n_people is None else n_people
    _check_int("n_val_people", n_val_people, 1, total - 1)
    rng = seeded_rng(seed, "finetune/people")
    rng.shuffle(everyone)
    people = everyone[:total]
    val, test = tuple(people[:n_val_people]), tuple(people[n_val_people:])
    texts = [_opening(kb, p, k)[0] for p in people for k in QA_KINDS]
    rng.shuffle(texts)  # the documents' order in the stream (the batches are reshuffled every epoch anyway)

    def learn_items(persons: Sequence[str]) -> tuple[tuple[str, str, str, str], ...]:
        return _learn_items(kb, persons)

    def qa_items(persons: Sequence[str]) -> tuple[tuple[str, str, str, str], ...]:
        return _qa_items(kb, persons)

    def phrased(persons: Sequence[str]) -> tuple[tuple[str, str, str, str], ...]:
        return tuple((name, template.format(person=p), template.format(person=p), expected)
                     for p in persons for name, (template, expected) in GENERALIZE_PHRASINGS.items())

    train_people = [p for p in splits.train_people
                    if all(splits.train_kb.has(p, a) for a in ("town", "job", "pet_species", "pet_name", "food"))]
    reference = seeded_rng(seed, "finetune/reference").sample(train_people, min(len(test), len(train_people)))
    return NewKnowledge(tuple(people), val, test, tuple(texts), learn_items(val), learn_items(test), qa_items(test),
                        phrased(test), phrased(sorted(reference)),
                        tuple(_question(kb, p, k) for p in test for k in QA_KINDS))


def name_token_ids(tokenizer: Tokenizer, people: Sequence[str]) -> list[int]:
    """The distinct token ids of ``people``'s names, as they are spelled in a sentence."""
    return sorted({i for p in people for i in tokenizer.encode(p, add_bos=False)})


def one_document_per_window(docs: Sequence[Sequence[int]], masks: Sequence[Sequence[int]], seed: int,
                            vocab_size: int, pad_id: int, seq_len: int | None = None) -> PackedDataset:
    """Windows of ``seq_len + 1`` tokens (default: the longest document's length) holding one document each.

    Raises ``ValueError`` naming ``seq_len`` if it would put two documents in a window or cut one.
    """
    longest = max(len(d) for d in docs)
    seq_len = longest - 1 if seq_len is None else seq_len
    _check_int("seq_len", seq_len, longest - 1, 2 * min(len(d) for d in docs) - 2)
    dataset = PackedDataset(docs, seq_len, seed=seed, loss_masks=masks, vocab_size=vocab_size, pack="documents",
                            pad_id=pad_id)
    assert len(dataset) == len(docs)
    return dataset


def encode_texts(texts: Sequence[str], tokenizer: Tokenizer, *, add_bos: bool = True) -> tuple[list[list[int]], list[list[int]]]:
    """``[BOS] sentence [EOS]`` token ids, and loss masks that are 1 after the subject.

    The targets are the tokens after the subject (``lives in Tolbury.`` and the EOS): the fact,
    and where it ends. Not the subject's name, which a question supplies: the loss is spent on
    the knowledge, as supervised fine-tuning spends it on the answer.
    """
    docs, masks = [], []
    for text in texts:
        parsed = parse_sentence(text)
        if parsed is None:
            raise ValueError(f"texts must be sentences of the world's grammar, got {text!r}")
        template, slots = parsed
        subject = slots[template.slots[0]]
        if not text.startswith(subject + " "):
            raise ValueError(f"texts must open with their subject, got {text!r}")
        head = tokenizer.encode(subject, add_bos=add_bos)
        ids = tokenizer.encode(text, add_bos=add_bos)
        if ids[: len(head)] != head:
            raise ValueError(f"the subject's tokens must be a prefix of the sentence's: {text!r}")
        docs.append(ids + [tokenizer.eos_token_id])
        masks.append([0] * len(head) + [1] * (len(ids) - len(head) + 1))
    return docs, masks


# ============================================================================ training
def finetune(base: CausalLM, dataset: PackedDataset, *, rank: int | None, lr: float, steps: int, batch_size: int,
             seed: int = 0, target_modules: Sequence[str] = LORA_TARGETS, alpha_over_r: float = ALPHA_OVER_R,
             use_rslora: bool = False, train_token_ids: Sequence[int] = (),
             ) -> tuple[CausalLM, dict[str, torch.Tensor], dict[str, Any]]:
    """Fine-tune a copy of ``base``: LoRA of rank ``rank``, every parameter when ``rank`` is None,
    or, when ``rank`` is 0, nothing but the embedding rows of ``train_token_ids``.

    ``train_token_ids`` (LoRA and rank 0 only): embedding rows trained beside the adapters, the
    tokens of names the base model never saw (see :func:`_train_token_rows`).

    AdamW with no weight decay, warm-up over the first tenth of the steps, cosine to lr / 10,
    gradient clipping at 1 (:func:`llmbook.train.train`, which trains whatever requires a gradient).
    Returns the fine-tuned model, ΔW per targeted matrix (float64, on the CPU) and a record
    (trainable parameters, seconds, loss history).
    """
    if not isinstance(base, CausalLM):
        raise ValueError(f"base must be a llmbook CausalLM, got {type(base).__name__}")
    _check_int("steps", steps, 1)
    _check_int("batch_size", batch_size, 1)
    if rank is not None:
        _check_int("rank", rank, 0)
    token_ids = sorted({int(i) for i in train_token_ids})
    if rank == 0 and not token_ids:
        raise ValueError("rank 0 trains only the embedding rows of train_token_ids, which is empty")
    targets = tuple(target_modules)
    model = copy.deepcopy(base)
    model.to(model.device)  # recomputes the rotary tables (a copy may hold ones made under inference mode)
    if rank is None:
        model.requires_grad_(True)
        before = {name: m.weight.detach().double().cpu().clone() for name, m in model.named_modules()
                  if name.startswith("model.layers.") and name.rsplit(".", 1)[-1] in targets}
    elif rank == 0:
        model.requires_grad_(False)
    else:
        add_lora(model, LoraConfig(r=rank, lora_alpha=alpha_over_r * rank, target_modules=targets,
                                   use_rslora=use_rslora), seed=seed)
    if token_ids and rank is not None:
        _train_token_rows(model, token_ids)
    config = TrainConfig(model="tinyworld-main", seq_len=dataset.seq_len, batch_size=batch_size, lr=lr, min_lr=lr / 10,
                         warmup_steps=max(1, steps // 10), max_steps=steps, weight_decay=0.0, eval_every=steps,
                         checkpoint_every=steps, seed=seed, pack=dataset.pack, schedule="cosine", dtype="float32")
    n_trainable = trainable_parameter_count(model) if rank != 0 else 0
    if token_ids and rank is not None:  # of the embedding, only the rows that receive updates count
        embedding = model.model.embed_tokens.weight
        n_trainable += len(token_ids) * embedding.shape[1] - (embedding.numel() if rank else 0)
    t0 = time.perf_counter()
    result = train(config, dataset, None, model=model, progress=False)
    seconds = time.perf_counter() - t0
    model = result.model.eval()
    if rank is None:
        deltas = {name: m.weight.detach().double().cpu() - before[name] for name, m in model.named_modules() if name in before}
    else:
        # ΔW = s B A in float64: in float32 the product's rounding adds a noise floor (~1e-7 of the
        # largest singular value) to the singular values beyond r, which lifts ‖ΔW‖_*/‖ΔW‖_F of a
        # rank-1 update above its bound of 1 in the eighth digit.
        deltas = {name: (layer.lora_B.weight.detach().double() @ layer.lora_A.weight.detach().double()).cpu()
                  * layer.scaling for name, layer in lora_layers(model).items()}
    losses = [h["train_loss"] for h in result.history]
    record = {"trainable_parameters": n_trainable, "train_seconds": seconds,
              "train_loss_first": losses[0], "train_loss_last_10": sum(losses[-10:]) / len(losses[-10:]),
              "loss_every_10": losses[::10]}
    return model, deltas, record


def _train_token_rows(model: CausalLM, token_ids: Sequence[int]) -> None:
    """Train the embedding rows of ``token_ids`` beside the adapters (the rest stays frozen).

    The gradient of every other row is zeroed by a hook, so AdamW (no weight decay) leaves those
    rows exactly where they were: its moments stay 0 and so does its update. This is what PEFT's
    ``trainable_token_indices`` option does for tokens a base model never learned (with a tied
    head, as here, the rows are also the output head's).
    """
    embedding = model.model.embed_tokens.weight
    for i, t in enumerate(token_ids):
        _check_int(f"train_token_ids[{i}]", t, 0, embedding.shape[0] - 1)
    mask = torch.zeros(embedding.shape[0], 1, dtype=embedding.dtype, device=embedding.device)
    mask[list(token_ids)] = 1.0
    embedding.requires_grad_(True)
    embedding.register_hook(lambda grad: grad * mask)


def delta_analysis(delta: torch.Tensor, top: int = 64) -> dict[str, Any]:
    """Singular values (largest ``top``), ‖ΔW‖_F, ‖ΔW‖_2, ‖ΔW‖_*, ‖ΔW‖_*/‖ΔW‖_F and stable rank ‖ΔW‖_F²/‖ΔW‖_2²."""
    if not isinstance(delta, torch.Tensor) or delta.ndim != 2:
        raise ValueError(f"delta must be a 2-D tensor, got {type(delta).__name__}"
                         + (f" of shape {tuple(delta.shape)}" if isinstance(delta, torch.Tensor) else ""))
    _check_int("top", top, 1)
    s = torch.linalg.svdvals(delta.detach().double().cpu())
    fro, spectral, nuclear = float(s.pow(2).sum().sqrt()), float(s[0]), float(s.sum())
    zero = fro == 0.0
    return {"shape": list(delta.shape), "frobenius": fro, "spectral": spectral, "nuclear": nuclear,
            "nuclear_over_frobenius": math.nan if zero else nuclear / fro,
            "stable_rank": math.nan if zero else fro**2 / spectral**2,
            "singular_values": [float(f"{v:.5g}") for v in s[:top].tolist()]}


# ============================================================================ evaluation
def _rate(flags: Sequence[bool]) -> dict[str, Any]:
    rate, se = rate_with_se([int(bool(f)) for f in flags], [1] * len(flags))
    return {"n": len(flags), "accuracy": rate, "accuracy_se": se}


def _qa_correct(model: CausalLM, tokenizer: Tokenizer, prompts: Sequence[str], kb, batch_size: int) -> list[bool]:
    answers = complete(model, tokenizer, list(prompts), max_new_tokens=20, stop=["\n"], batch_size=batch_size)
    return [check_qa(p + a, kb).correct for p, a in zip(prompts, answers)]


def _first_sentence(prefix: str, continuation: str) -> str:
    """``prefix`` + the continuation up to its first full stop, e.g. ("Mira lives in", " Tolbury. The") ->
    "Mira lives in Tolbury."; the continuation's leading space is supplied if missing."""
    text = f"{prefix} {continuation.strip()}"
    stop = text.find(".", len(prefix))
    return text if stop < 0 else text[: stop + 1]


def _phrased_correct(model: CausalLM, tokenizer: Tokenizer, items: Sequence[tuple[str, str, str, str]], kb,
                     batch_size: int) -> list[bool]:
    """Greedy continuations graded as the model card grades fact completions (``_fact_completion``)."""
    prompts = [prompt for _, prompt, _, _ in items]
    outs = complete(model, tokenizer, prompts, max_new_tokens=16, stop=["\n"], batch_size=batch_size)
    return _grade(items, outs, kb)


def _grade(items: Sequence[tuple[str, str, str, str]], outs: Sequence[str], kb) -> list[bool]:
    """Whether each continuation's first sentence (graded prefix + continuation) is the item's
    expected template and true in the world."""
    correct = []
    for (_, _, prefix, expected), out in zip(items, outs):
        # The model writes the space before the value itself; a missing one is not held against it.
        # The first sentence ends at the first full stop (no value of the world contains one).
        first = _first_sentence(prefix, out)
        check = check_statement(first, kb) if first else None
        correct.append(check is not None and check.template == expected and check.true is True)
    return correct


def score_model(model: CausalLM, tokenizer: Tokenizer, splits: Splits, data: NewKnowledge, *, qa_seen: Sequence[str],
                heldout: Sequence[Any], heldout_val: Sequence[Any], batch_size: int = 32,
                include_reference: bool = False) -> dict[str, Any]:
    """Learn (validation and test), generalize, forget (training-fact QA; nats per token on held-out documents)."""
    kb = splits.kb
    out: dict[str, Any] = {"learn_val": _rate(_phrased_correct(model, tokenizer, data.val_items, kb, batch_size))}
    flags = _phrased_correct(model, tokenizer, data.test_items, kb, batch_size)
    out["learn"] = _rate(flags)
    out["learn_by_kind"] = {k: _rate([f for f, it in zip(flags, data.test_items) if it[0] == k]) for k in QA_KINDS}
    flags = _phrased_correct(model, tokenizer, data.generalize_qa, kb, batch_size)
    out["generalize_qa"] = _rate(flags)
    out["generalize_qa_by_kind"] = {k: _rate([f for f, it in zip(flags, data.generalize_qa) if it[0] == k])
                                    for k in QA_KINDS}
    out["qa_strict"] = _rate(_qa_correct(model, tokenizer, data.test_questions, kb, batch_size))
    flags = _phrased_correct(model, tokenizer, data.generalize, kb, batch_size)
    out["generalize"] = _rate(flags)
    out["generalize_by_phrasing"] = {name: _rate([f for f, it in zip(flags, data.generalize) if it[0] == name])
                                     for name in GENERALIZE_PHRASINGS}
    if include_reference:
        ref = _phrased_correct(model, tokenizer, data.generalize_reference, kb, batch_size)
        out["generalize_training_people"] = _rate(ref)
    out["qa_seen"] = _rate(_qa_correct(model, tokenizer, qa_seen, kb, batch_size))
    if include_reference:
        report = entropy_report(model, tokenizer, heldout, batch_size=batch_size)
        out["entropy_gap"] = {family: report[family]["gap"] for family in report}
    out["heldout_nll"] = [list(x) for x in document_nll(model, tokenizer, [d.text for d in heldout], batch_size)]
    out["heldout_val_nll"] = [list(x) for x in document_nll(model, tokenizer, [d.text for d in heldout_val], batch_size)]
    return out


def _change(after: Sequence[Sequence[float]], before: Sequence[Sequence[float]]) -> dict[str, float]:
    """Change in nats per token (after minus before) pooled over documents, with a paired standard error."""
    mean, se = ratio_with_se([a[0] - b[0] for a, b in zip(after, before)], [int(b[1]) for b in before])
    return {"n_docs": len(before), "n_tokens": int(sum(b[1] for b in before)), "mean": mean, "se": se}


def _check_budget(budget: Any) -> float:
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget) or budget <= 0:
        raise ValueError(f"forget_budget must be a number of nats per token > 0, got {budget!r}")
    return float(budget)


def choose_winner(runs: Sequence[Mapping[str, Any]], forget_budget: float | None = None) -> Mapping[str, Any]:
    """The run with the best validation learn accuracy among those whose loss on the validation
    held-out documents rose by at most ``forget_budget`` nats per token (default
    :data:`FORGET_BUDGET`); runs within one standard error of the best are ties, won by the one
    that forgot least. If no run is within the budget, the one that forgot least.

    Why a budget: in a fixed number of steps, learning keeps rising with the learning rate until
    the model breaks, so "the best learn" alone picks the largest rate of any grid.
    """
    if not runs:
        raise ValueError("runs must not be empty")
    budget = _check_budget(FORGET_BUDGET if forget_budget is None else forget_budget)
    eligible = [r for r in runs if r["forget_nll_val"]["mean"] <= budget]
    if not eligible:
        return min(runs, key=lambda r: r["forget_nll_val"]["mean"])
    best = max(eligible, key=lambda r: r["learn_val"]["accuracy"])
    margin = best["learn_val"]["accuracy_se"] if math.isfinite(best["learn_val"]["accuracy_se"]) else 0.0
    tied = [r for r in eligible if r["learn_val"]["accuracy"] >= best["learn_val"]["accuracy"] - margin]
    return min(tied, key=lambda r: (r["forget_nll_val"]["mean"], -r["learn_val"]["accuracy"]))


def select_winners(runs: Sequence[Mapping[str, Any]], forget_budget: float | None = None) -> dict[str, dict[str, Any]]:
    """:func:`choose_winner` for every method of ``runs`` (seed as recorded), with where it sits."""
    budget = _check_budget(FORGET_BUDGET if forget_budget is None else forget_budget)
    winners: dict[str, dict[str, Any]] = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        mine = [r for r in runs if r["method"] == method]
        lrs = [r["lr"] for r in mine]
        winner = choose_winner(mine, budget)
        winners[method] = {"lr": winner["lr"], "seed": winner["seed"],
                           "lr_at_grid_edge": winner["lr"] in (min(lrs), max(lrs)),
                           "within_budget": winner["forget_nll_val"]["mean"] <= budget}
    return winners


def reselect(path: str | Path, forget_budget: float | None = None) -> dict[str, Any]:
    """Choose the winners of a committed ``lora-ranks`` result file again with today's rule
    (:func:`select_winners`), without training anything; rewrites the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"results must be a lora-ranks result file, got {str(path)!r} (no such file)")
    results = json.loads(path.read_text(encoding="utf-8"))
    budget = _check_budget(FORGET_BUDGET if forget_budget is None else forget_budget)
    results["winners"] = select_winners(results["runs"], budget)
    results["settings"]["forget_budget"] = budget
    results["settings"]["selection"] = SELECTION_RULE
    path.write_text(json.dumps(results, indent=None, separators=(",", ":")) + "\n", encoding="utf-8")
    return results


# ============================================================================ the experiment
def run_lora_ranks(base: CausalLM, tokenizer: Tokenizer, *, ranks: Sequence[int] = DEFAULT_RANKS,
                   lora_lrs: Sequence[float] = DEFAULT_LORA_LRS, full_lrs: Sequence[float] | None = DEFAULT_FULL_LRS,
                   steps: int = DEFAULT_STEPS, batch_size: int = DEFAULT_BATCH, seq_len: int | None = DEFAULT_SEQ_LEN,
                   seed: int = 0, n_val_people: int = DEFAULT_VAL_PEOPLE, n_people: int | None = DEFAULT_PEOPLE, n_qa_seen: int = 300,
                   docs_per_family: int = 20, repeat_seeds: Sequence[int] = (), top: int = 64,
                   eval_batch_size: int = 32, progress: bool = True,
                   rows_lrs: Sequence[float] | None = DEFAULT_ROWS_LRS,
                   control_rank: int | None = CONTROL_RANK, forget_budget: float | None = None,
                   rows_first_lr: float | None = None) -> dict[str, Any]:
    """Fine-tune ``base`` at every rank and learning rate (and in full), score every run; pick winners.

    Every LoRA run of ``ranks`` also trains the embedding rows of the taught names' tokens (which
    the base model never saw; see :func:`_train_token_rows`). ``rows_lrs``: runs that train those
    rows alone (rank 0), None for none. ``control_rank``: LoRA at that rank with the embedding
    frozen, at ``lora_lrs``, None for none. ``rows_first_lr``: train the names' rows alone first
    (at that rate, as a rank-0 run) and start every other run from the result with the embedding
    frozen, so that the ranks share the same rows (their ``name_rows`` is then False).

    ``repeat_seeds``: the winners are trained again with each of these seeds (LoRA's A, the
    batches' order), to show how much the numbers move with the seed alone.
    """
    if not isinstance(base, CausalLM):
        raise ValueError(f"base must be a llmbook CausalLM, got {type(base).__name__}")
    if not isinstance(tokenizer, Tokenizer):
        raise ValueError(f"tokenizer must be a llmbook Tokenizer, got {type(tokenizer).__name__}")
    if isinstance(ranks, (str, bytes)) or not isinstance(ranks, Sequence):
        raise ValueError(f"ranks must be a sequence of integers >= 1, got {ranks!r}")
    limit = min(min(m.in_features, m.out_features) for name, m in base.named_modules()
                if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in LORA_TARGETS)
    for i, r in enumerate(ranks):
        _check_int(f"ranks[{i}]", r, 1, limit)
    if len(set(ranks)) != len(ranks):
        raise ValueError(f"ranks must not repeat, got {list(ranks)}")
    lora_lrs = _check_lrs("lora_lrs", lora_lrs)
    full_lrs = None if full_lrs is None else _check_lrs("full_lrs", full_lrs)
    rows_lrs = None if rows_lrs is None else _check_lrs("rows_lrs", rows_lrs)
    if forget_budget is not None:
        _check_budget(forget_budget)
    if rows_first_lr is not None and (isinstance(rows_first_lr, bool) or not isinstance(rows_first_lr, (int, float))
                                      or not 0 < rows_first_lr < 1):
        raise ValueError(f"rows_first_lr must be a learning rate in (0, 1), got {rows_first_lr!r}")
    if control_rank is not None:
        _check_int("control_rank", control_rank, 1, limit)
    if not ranks and full_lrs is None:
        raise ValueError("nothing to train: ranks is empty and full_lrs is None")
    for name, value, low in (("steps", steps, 1), ("batch_size", batch_size, 1),
                             ("seed", seed, 0), ("n_qa_seen", n_qa_seen, 1), ("docs_per_family", docs_per_family, 1),
                             ("top", top, 1), ("eval_batch_size", eval_batch_size, 1)):
        _check_int(name, value, low)
    for i, s in enumerate(repeat_seeds):
        _check_int(f"repeat_seeds[{i}]", s, 0)
    t_start = time.perf_counter()
    splits = default_splits(0)
    data = new_knowledge_data(splits, seed, n_val_people, n_people)
    docs, masks = encode_texts(data.train_texts, tokenizer)
    dataset = one_document_per_window(docs, masks, seed, base.config.vocab_size, tokenizer.pad_token_id or 0, seq_len)
    name_tokens = name_token_ids(tokenizer, data.people)
    qa_seen = [it.prompt for it in evaluation_suites(splits, seed, n_qa_seen)["qa_seen"]]
    heldout = heldout_documents(splits, seed, docs_per_family)
    heldout_val = heldout_documents(splits, seed + 1, max(1, docs_per_family // 2))

    def log(msg: str) -> None:
        if progress:
            print(f"[{time.perf_counter() - t_start:7.1f} s] {msg}", flush=True)

    base = base.eval()
    t0 = time.perf_counter()
    reference = score_model(base, tokenizer, splits, data, qa_seen=qa_seen, heldout=heldout, heldout_val=heldout_val,
                            batch_size=eval_batch_size, include_reference=True)
    eval_seconds = time.perf_counter() - t0
    log(f"base: learn {reference['learn']['accuracy']:.3f} gen {reference['generalize']['accuracy']:.3f} "
        f"qa_seen {reference['qa_seen']['accuracy']:.3f} ({eval_seconds:.0f} s)")

    start = base  # the model every run starts from

    def one(method: str, rank: int | None, lr: float, run_seed: int, rows: bool) -> dict[str, Any]:
        nonlocal last_model
        model, deltas, record = finetune(start, dataset, rank=rank, lr=lr, steps=steps, batch_size=batch_size,
                                         seed=run_seed, train_token_ids=name_tokens if rows else ())
        last_model = model
        t1 = time.perf_counter()
        scores = score_model(model, tokenizer, splits, data, qa_seen=qa_seen, heldout=heldout, heldout_val=heldout_val,
                             batch_size=eval_batch_size)
        nll, nll_val = scores.pop("heldout_nll"), scores.pop("heldout_val_nll")
        analysis = {name: delta_analysis(d, top) for name, d in deltas.items()}
        run = {"method": method, "rank": rank, "lr": lr, "seed": run_seed, "name_rows": rows, **record, **scores,
               "forget_qa_seen": scores["qa_seen"]["accuracy"] - reference["qa_seen"]["accuracy"],
               "forget_nll": _change(nll, reference["heldout_nll"]),
               "forget_nll_val": _change(nll_val, reference["heldout_val_nll"]),
               "eval_seconds": time.perf_counter() - t1,
               "delta_summary": _summarise(analysis), "delta": analysis}
        log(f"{method:>5} lr {lr:.0e} seed {run_seed}: learn {run['learn']['accuracy']:.3f} "
            f"(val {run['learn_val']['accuracy']:.3f}) gen {run['generalize']['accuracy']:.3f} "
            f"qa {run['generalize_qa']['accuracy']:.3f} qa_seen {run['qa_seen']['accuracy']:.3f} "
            f"loss {record['train_loss_first']:.2f}->{record['train_loss_last_10']:.2f} dnll {run['forget_nll']['mean']:+.4f} "
            f"ratio {run['delta_summary']['nuclear_over_frobenius_mean'] if run['delta_summary'] else 0:.2f} "
            f"({record['train_seconds']:.0f} + {run['eval_seconds']:.0f} s)")
        return run

    last_model: CausalLM | None = None
    rows_first = None
    if rows_first_lr is not None:
        # Stage 1: the names' rows alone; every later run starts from them, frozen, so that all
        # ranks share the same rows and differ in nothing but the adapters. A fresh copy of the
        # base holds the trained weights (the stage's model carries the gradient-mask hook).
        rows_first = one("rows first", 0, rows_first_lr, seed, True)
        start = copy.deepcopy(base)
        start.load_state_dict(last_model.state_dict())
        start.to(start.device).eval()
    # (name, rank, learning rates, whether the names' embedding rows train too)
    methods: list[tuple[str, int | None, tuple[float, ...], bool]] = []
    if rows_lrs is not None:
        methods.append(("rows", 0, rows_lrs, True))
    methods += [(f"r={r}", r, lora_lrs, rows_first_lr is None) for r in ranks]
    if control_rank is not None:
        methods.append((f"r={control_rank} frozen", control_rank, lora_lrs, False))
    if full_lrs is not None:
        methods.append(("full", None, full_lrs, False))
    runs: list[dict[str, Any]] = []
    for method, rank, lrs, rows in methods:
        runs += [one(method, rank, lr, seed, rows) for lr in lrs]
    winners = select_winners(runs, forget_budget)
    repeats = []
    for s in repeat_seeds:
        for method, rank, _, rows in methods:
            repeats.append(one(method, rank, winners[method]["lr"], s, rows))
    ref = {k: v for k, v in reference.items() if k not in ("heldout_nll", "heldout_val_nll")}
    return {
        "settings": {"base": "tinyworld-main", "ranks": list(ranks), "lora_lrs": list(lora_lrs),
                     "rows_lrs": None if rows_lrs is None else list(rows_lrs), "control_rank": control_rank,
                     "name_tokens": name_tokens, "rows_first_lr": rows_first_lr, "forget_budget": FORGET_BUDGET if forget_budget is None else forget_budget,
                     "selection": SELECTION_RULE,
                     "full_lrs": None if full_lrs is None else list(full_lrs), "steps": steps, "batch_size": batch_size,
                     "seq_len": dataset.seq_len, "seed": seed, "repeat_seeds": list(repeat_seeds), "n_val_people": n_val_people,
                     "n_people": n_people, "n_qa_seen": n_qa_seen, "docs_per_family": docs_per_family, "top": top,
                     "target_modules": list(LORA_TARGETS), "alpha_over_r": ALPHA_OVER_R, "use_rslora": False,
                     "weight_decay": 0.0, "warmup_steps": max(1, steps // 10), "schedule": "cosine to lr / 10",
                     "grad_clip": 1.0, "loss": "the tokens after the subject's name, EOS included",
                     "train_tokens_per_epoch": int(dataset.tokens.numel()), "windows_per_epoch": len(dataset),
                     "epochs": steps * batch_size / len(dataset), "padding_fraction": dataset.padding_fraction,
                     "base_parameters": base.num_parameters(), "data": data.summary(),
                     "n_heldout_docs": len(heldout), "n_heldout_val_docs": len(heldout_val)},
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "seconds": {"total": time.perf_counter() - t_start, "base_eval": eval_seconds},
        "reference": ref,
        "runs": runs,
        "winners": winners,
        "repeats": repeats,
        "rows_first": rows_first,
    }


def _summarise(analysis: Mapping[str, Mapping[str, Any]]) -> dict[str, Any] | None:
    if not analysis:  # rank 0: no linear layer changed
        return None
    ratios = [a["nuclear_over_frobenius"] for a in analysis.values()]
    stable = [a["stable_rank"] for a in analysis.values()]
    return {"n_matrices": len(analysis), "nuclear_over_frobenius_mean": sum(ratios) / len(ratios),
            "nuclear_over_frobenius_max": max(ratios), "stable_rank_mean": sum(stable) / len(stable),
            "stable_rank_max": max(stable),
            "frobenius_total": math.sqrt(sum(a["frobenius"] ** 2 for a in analysis.values()))}


# ============================================================================ a real model
#: Facts a small English model already knows, to see whether fine-tuning on new facts erases them:
#: (prompt, the answer's first word). Inputs of the measurement, not results.
KNOWN_FACTS = tuple((f"The capital of {country} is", city) for country, city in (
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
    ("China", "Beijing"), ("Russia", "Moscow"), ("England", "London"), ("Egypt", "Cairo"), ("Greece", "Athens"),
    ("Portugal", "Lisbon"), ("Austria", "Vienna"), ("Ireland", "Dublin"), ("Norway", "Oslo"),
    ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Denmark", "Copenhagen"), ("Poland", "Warsaw"),
    ("Hungary", "Budapest"), ("Canada", "Ottawa"), ("Argentina", "Buenos"), ("Peru", "Lima"),
    ("Kenya", "Nairobi"), ("Thailand", "Bangkok"), ("South Korea", "Seoul"), ("India", "New"),
    ("Turkey", "Ankara"), ("Belgium", "Brussels"), ("Cuba", "Havana"), ("Iran", "Tehran"),
))
SMOLLM2_RANKS = (2, 64)
# 4 people, 20 one-sentence documents: every step sees all of them (a full batch), 50 passes. Two
# learning rates for both ranks (each run costs minutes on a CPU): a first run at 2e-3 alone taught
# rank 2 every fact and cost the model nearly all the capitals it knew, so a 4x lower rate joins it.
SMOLLM2_PEOPLE, SMOLLM2_BATCH, SMOLLM2_STEPS, SMOLLM2_LRS = 4, 20, 50, (5e-4, 2e-3)


def _complete_plain(model: CausalLM, tokenizer: Tokenizer, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
    """Greedy continuations of plain text (no BOS: an instruct model's BOS opens a chat turn)."""
    from llmbook.generate import generate

    out: list[str] = []
    for start in range(0, len(prompts), 16):
        out += generate(model, tokenizer, list(prompts[start:start + 16]), max_new_tokens=max_new_tokens,
                        temperature=0.0, stop=["\n"], add_bos=False).texts
    return out


@torch.no_grad()
def _sentence_nll(model: CausalLM, tokenizer: Tokenizer, texts: Sequence[str]) -> list[list[float]]:
    """[nats, tokens] of each text after its first token (no BOS), one text at a time."""
    rows = []
    for text in texts:
        ids = torch.tensor([tokenizer.encode(text, add_bos=False)], device=model.device)
        logits = model(ids).float()
        nll = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum")
        rows.append([float(nll), ids.shape[1] - 1])
    return rows


def _score_real(model: CausalLM, tokenizer: Tokenizer, splits: Splits, data: NewKnowledge) -> dict[str, Any]:
    kb = splits.kb

    def graded(items: Sequence[tuple[str, str, str, str]]) -> list[bool]:
        return _grade(items, _complete_plain(model, tokenizer, [it[1] for it in items], 8), kb)

    known = _complete_plain(model, tokenizer, [p for p, _ in KNOWN_FACTS], 4)
    items = data.val_items + data.test_items  # no learning rate is chosen here: every person is a test person
    qa = _qa_items(kb, data.val_people + data.test_people)
    return {"learn": _rate(graded(items)), "generalize_qa": _rate(graded(qa)),
            "known_facts": _rate([o.strip().startswith(a) for o, (_, a) in zip(known, KNOWN_FACTS)]),
            "known_examples": [p + o for (p, _), o in list(zip(KNOWN_FACTS, known))[:3]],
            "known_nll": _sentence_nll(model, tokenizer, [f"{p} {a}" for p, a in KNOWN_FACTS])}


def run_smollm2(model: CausalLM, tokenizer: Tokenizer, *, ranks: Sequence[int] = SMOLLM2_RANKS,
                lrs: Sequence[float] = SMOLLM2_LRS,
                steps: int = SMOLLM2_STEPS, batch_size: int = SMOLLM2_BATCH, seq_len: int | None = None,
                n_people: int = SMOLLM2_PEOPLE, seed: int = 0,
                progress: bool = True) -> dict[str, Any]:
    """LoRA fine-tunes of a real model on a few TinyWorld facts (one sentence each) at ``ranks``:
    learn (the fine-tuning sentence up to its value), generalize (the QA format), forget (capitals
    it knew; nats per token on those sentences), at each of ``lrs`` (no validation split: every
    run is reported), alpha = 2 r, all seven linear layers of every block."""
    if not isinstance(model, CausalLM):
        raise ValueError(f"model must be a llmbook CausalLM, got {type(model).__name__}")
    limit = min(min(m.in_features, m.out_features) for name, m in model.named_modules()
                if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in LORA_TARGETS)
    for i, r in enumerate(ranks):
        _check_int(f"ranks[{i}]", r, 1, limit)
    lrs = _check_lrs("lrs", lrs)
    for name, value, low in (("steps", steps, 1), ("batch_size", batch_size, 1),
                             ("n_people", n_people, 2), ("seed", seed, 0)):
        _check_int(name, value, low)
    t_start = time.perf_counter()
    splits = default_splits(0)
    # Every person is a test person here; new_knowledge_data needs one validation person, whose
    # facts are trained and scored like the others.
    data = new_knowledge_data(splits, seed, 1, n_people)
    docs, masks = encode_texts(data.train_texts, tokenizer, add_bos=False)
    dataset = one_document_per_window(docs, masks, seed, model.config.vocab_size, tokenizer.pad_token_id or 0, seq_len)
    model = model.eval()
    t0 = time.perf_counter()
    base_scores = _score_real(model, tokenizer, splits, data)
    if progress:
        print(f"base: learn {base_scores['learn']['accuracy']:.3f} known {base_scores['known_facts']['accuracy']:.3f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    runs = []
    for r in ranks:
        for lr in lrs:
            tuned, deltas, record = finetune(model, dataset, rank=r, lr=lr, steps=steps, batch_size=batch_size,
                                             seed=seed)
            scores = _score_real(tuned, tokenizer, splits, data)
            summary = _summarise({name: delta_analysis(d, 8) for name, d in deltas.items()})
            run = {"rank": r, "lr": lr, **record, **{k: v for k, v in scores.items() if k != "known_nll"},
                   "forget_known": scores["known_facts"]["accuracy"] - base_scores["known_facts"]["accuracy"],
                   "forget_nll": _change(scores["known_nll"], base_scores["known_nll"]), "delta_summary": summary}
            runs.append(run)
            if progress:
                print(f"r={r} lr {lr:.0e}: learn {run['learn']['accuracy']:.3f} qa {run['generalize_qa']['accuracy']:.3f} "
                      f"known {run['known_facts']['accuracy']:.3f} dnll {run['forget_nll']['mean']:+.3f} "
                      f"loss {record['train_loss_first']:.2f}->{record['train_loss_last_10']:.2f} "
                      f"({record['train_seconds']:.0f} s)", flush=True)
            del tuned
    base_out = {k: v for k, v in base_scores.items() if k != "known_nll"}
    return {"settings": {"ranks": list(ranks), "lrs": list(lrs), "steps": steps, "batch_size": batch_size, "seq_len": dataset.seq_len,
                         "n_people": n_people, "seed": seed, "alpha_over_r": ALPHA_OVER_R,
                         "target_modules": list(LORA_TARGETS), "weight_decay": 0.0, "n_known_facts": len(KNOWN_FACTS),
                         "train_tokens_per_epoch": int(dataset.tokens.numel()), "windows_per_epoch": len(dataset),
                         "epochs": steps * batch_size / len(dataset), "base_parameters": model.num_parameters(),
                         "n_learn": len(data.val_items + data.test_items),
                         "example_document": data.train_texts[0], "source": getattr(model, "source", None)},
            "versions": {"python": platform.python_version(), "torch": torch.__version__},
            "seconds": {"total": time.perf_counter() - t_start}, "reference": base_out, "runs": runs}


# ============================================================================ command line
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llmbook.finetune", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    lr = sub.add_parser("lora-ranks", help="TinyWorld-main: LoRA at several ranks and full fine-tuning on new facts")
    lr.add_argument("--out", required=True, help="JSON file for the results")
    lr.add_argument("--model", default="tinyworld-main", help="the base model (default tinyworld-main)")
    lr.add_argument("--ranks", type=int, nargs="*", default=list(DEFAULT_RANKS), help="LoRA ranks")
    lr.add_argument("--lora-lrs", type=float, nargs="+", default=list(DEFAULT_LORA_LRS), help="LoRA learning rates")
    lr.add_argument("--full-lrs", type=float, nargs="+", default=list(DEFAULT_FULL_LRS), help="full fine-tuning learning rates")
    lr.add_argument("--no-full", action="store_true", help="skip full fine-tuning")
    lr.add_argument("--rows-lrs", type=float, nargs="+", default=list(DEFAULT_ROWS_LRS),
                    help="learning rates of the runs that train only the names' embedding rows")
    lr.add_argument("--no-rows", action="store_true", help="skip the runs that train only the names' rows")
    lr.add_argument("--control-rank", type=int, default=CONTROL_RANK,
                    help=f"rank of the control run with the embedding frozen (default {CONTROL_RANK})")
    lr.add_argument("--no-control", action="store_true", help="skip the control with the embedding frozen")
    lr.add_argument("--rows-first", type=float, default=None, metavar="LR",
                    help="train the names' rows alone first at LR, then every run from them, frozen")
    lr.add_argument("--forget-budget", type=float, default=FORGET_BUDGET,
                    help=f"nats per token a chosen run may add on validation text (default {FORGET_BUDGET})")
    lr.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"optimizer steps per run (default {DEFAULT_STEPS})")
    lr.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help=f"windows per step (default {DEFAULT_BATCH})")
    lr.add_argument("--seq-len", type=int, default=None, help="window length (default: the longest document's)")
    lr.add_argument("--seed", type=int, default=0, help="seed of the people split, LoRA's A and the batches")
    lr.add_argument("--repeat-seeds", type=int, nargs="*", default=[], help="seeds to train the winners again with")
    lr.add_argument("--n-people", type=int, default=DEFAULT_PEOPLE, help="people taught (default: all 80)")
    lr.add_argument("--n-val-people", type=int, default=DEFAULT_VAL_PEOPLE, help="people whose questions choose the learning rate")
    lr.add_argument("--n-qa-seen", type=int, default=300, help="training-fact questions for forgetting")
    lr.add_argument("--docs-per-family", type=int, default=20, help="held-out documents per family for forgetting")
    lr.add_argument("--device", default="cpu", help="cpu, cuda, mps (default cpu: the committed run's)")
    lr.add_argument("--quiet", action="store_true", help="no progress lines")
    sm = sub.add_parser("smollm2", help="a real model: LoRA of SmolLM2-135M-Instruct on a few new facts at two ranks")
    sm.add_argument("--out", required=True, help="JSON file for the results")
    sm.add_argument("--model", default="smollm2-135m-instruct", help="the base model (default: the book's real model)")
    sm.add_argument("--ranks", type=int, nargs="+", default=list(SMOLLM2_RANKS), help="LoRA ranks")
    rs = sub.add_parser("reselect", help="choose the winners of a lora-ranks result file again, without training")
    rs.add_argument("--results", required=True, help="the lora-ranks JSON file (rewritten)")
    rs.add_argument("--forget-budget", type=float, default=FORGET_BUDGET,
                    help=f"nats per token a chosen run may add on validation text (default {FORGET_BUDGET})")
    sm.add_argument("--lrs", type=float, nargs="+", default=list(SMOLLM2_LRS), help="learning rates (default 5e-4 2e-3)")
    sm.add_argument("--steps", type=int, default=SMOLLM2_STEPS, help=f"optimizer steps per run (default {SMOLLM2_STEPS})")
    sm.add_argument("--batch-size", type=int, default=SMOLLM2_BATCH, help=f"documents per step (default {SMOLLM2_BATCH})")
    sm.add_argument("--n-people", type=int, default=SMOLLM2_PEOPLE, help="people taught, five facts each (default 4)")
    sm.add_argument("--device", default="cpu", help="cpu, cuda, mps (default cpu)")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the command line; bad arguments raise ``ValueError`` naming the option."""
    from llmbook.hub import load

    args = _parser().parse_args(argv)
    if args.command == "reselect":
        results = reselect(args.results, args.forget_budget)
        for method, w in results["winners"].items():
            print(f"{method:>10}: lr {w['lr']:.0e}" + ("" if w["within_budget"] else " (none within the budget)")
                  + (" (at the edge of its grid)" if w["lr_at_grid_edge"] else ""))
        return results
    if args.command == "lora-ranks":
        for i, r in enumerate(args.ranks):
            _check_int(f"ranks[{i}]", r, 1)
        _check_lrs("lora_lrs", args.lora_lrs)
        _check_lrs("full_lrs", args.full_lrs)
        _check_lrs("rows_lrs", args.rows_lrs)
        _check_int("control_rank", args.control_rank, 1)
        _check_budget(args.forget_budget)
        _check_int("steps", args.steps, 1)
        base, tokenizer = load(args.model, device=pick_device(args.device))
        results = run_lora_ranks(base, tokenizer, ranks=args.ranks, lora_lrs=args.lora_lrs,
                                 full_lrs=None if args.no_full else args.full_lrs, steps=args.steps,
                                 batch_size=args.batch_size, seq_len=args.seq_len, seed=args.seed,
                                 n_val_people=args.n_val_people, n_people=args.n_people, n_qa_seen=args.n_qa_seen,
                                 docs_per_family=args.docs_per_family, repeat_seeds=args.repeat_seeds,
                                 progress=not args.quiet, rows_lrs=None if args.no_rows else args.rows_lrs,
                                 control_rank=None if args.no_control else args.control_rank,
                                 forget_budget=args.forget_budget, rows_first_lr=args.rows_first)
        results["settings"]["model"] = args.model
        results["settings"]["device"] = str(base.device)
    else:
        for i, r in enumerate(args.ranks):
            _check_int(f"ranks[{i}]", r, 1)
        _check_lrs("lrs", args.lrs)
        _check_int("steps", args.steps, 1)
        base, tokenizer = load(args.model, device=pick_device(args.device))
        results = run_smollm2(base, tokenizer, ranks=args.ranks, lrs=args.lrs, steps=args.steps, batch_size=args.batch_size,
                              n_people=args.n_people)
        results["settings"]["model"] = args.model
        results["settings"]["device"] = str(base.device)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=None, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"results in {out} ({results['seconds']['total']:.0f} s)")
    return results


if __name__ == "__main__":
    try:
        main()
    except ValueError as err:
        sys.exit(f"llmbook.finetune: error: {err}")
