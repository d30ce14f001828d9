"""The training loop: loss falls, runs reproduce, resume is exact, outputs load in llmbook and transformers."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from llmbook import hub
from llmbook.model import CausalLM, ModelConfig
from llmbook.tokenizer import Tokenizer
from llmbook.train import (
    MODEL_PRESETS,
    PRESETS,
    PackedDataset,
    TrainConfig,
    build_model_config,
    distillation_loss,
    encode_documents,
    get_preset,
    latest_checkpoint,
    lr_at,
    main,
    next_token_loss,
    param_groups,
    read_jsonl_texts,
    split_documents,
    train,
)

NAMES = ["Ada", "Bo", "Cy", "Di", "Eli", "Fay"]
ANIMALS = ["cat", "dog", "owl", "fox", "hen"]
TOWNS = ["Elm", "Oakridge", "Pinefall", "Stonebrook"]
VERBS = ["sees", "feeds", "follows", "finds"]


def sentences(n: int, seed: int) -> list[str]:
    """Documents of a tiny regular language: a few words, rigid templates, so a small model learns them fast."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(2, 4)):
            if rng.random() < 0.5:
                parts.append(f"{rng.choice(NAMES)} {rng.choice(VERBS)} the {rng.choice(ANIMALS)} in {rng.choice(TOWNS)}.")
            else:
                parts.append(f"The {rng.choice(ANIMALS)} of {rng.choice(NAMES)} lives in {rng.choice(TOWNS)}.")
        docs.append(" ".join(parts))
    return docs


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(sentences(200, seed=1), trainer)
    return Tokenizer(tok, bos_token_id=1, eos_token_id=2, pad_token_id=0)


@pytest.fixture(scope="module")
def corpus(tokenizer: Tokenizer) -> tuple[list[list[int]], list[list[int]]]:
    """Train and eval documents from different seeds (no shared document)."""
    return encode_documents(sentences(300, seed=2), tokenizer), encode_documents(sentences(40, seed=3), tokenizer)


def small_config(**overrides) -> TrainConfig:
    return get_preset("tiny-test", **overrides)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tokenizer, corpus):
    out = tmp_path_factory.mktemp("run")
    result = train(small_config(max_steps=150, eval_every=50), corpus[0], corpus[1], tokenizer=tokenizer,
                   out_dir=out, device="cpu", progress=False)
    return result, out


# ----------------------------------------------------------------------------- learning
def test_loss_falls_from_log_vocab_to_well_below(trained, tokenizer):
    result, _ = trained
    evals = result.eval_losses
    assert evals[0][0] == 0 and evals[-1][0] == 150
    initial, final = evals[0][1], evals[-1][1]
    # An untrained model (init std 0.02) predicts nearly uniformly: ~log V nats per token.
    assert abs(initial - math.log(tokenizer.vocab_size)) < 0.1
    assert final < 0.4 * initial, evals
    assert final < 2.0, evals
    train_losses = [h["train_loss"] for h in result.history if h["train_loss"] is not None]
    assert len(train_losses) == 150
    assert sum(train_losses[-10:]) / 10 < 0.5 * sum(train_losses[:10]) / 10


def test_history_json_and_files(trained):
    result, out = trained
    saved = json.loads((out / "history.json").read_text())
    assert saved == json.loads(json.dumps(result.history))
    assert {"step", "train_loss", "eval_loss", "lr", "tokens_per_s"} <= set(saved[-1])
    assert all(h["tokens_per_s"] > 0 for h in saved[1:])
    for name in ("config.json", "model.safetensors", "tokenizer.json", "train_config.json"):
        assert (out / name).is_file(), name
    record = json.loads((out / "train_config.json").read_text())
    assert record["train_config"]["max_steps"] == 150
    # keep_checkpoints=2 (preset): only the newest two are left, each complete.
    steps = sorted(int(p.name.split("-")[1]) for p in (out / "checkpoints").iterdir())
    assert steps == [125, 150]
    ckpt = latest_checkpoint(out)
    assert ckpt.name == "step-000150"
    for name in ("model.safetensors", "config.json", "optimizer.pt", "trainer_state.pt", "train_config.json"):
        assert (ckpt / name).is_file(), name


def test_saved_model_loads_in_llmbook_and_transformers_with_same_logits(trained, tokenizer):
    from transformers import AutoModelForCausalLM

    result, out = trained
    model, tok = hub.load(out, device="cpu")
    assert tok.vocab_size == tokenizer.vocab_size and tok.bos_token_id == 1 and tok.eos_token_id == 2
    ids = torch.tensor([tokenizer.encode("Ada sees the cat in Elm. The dog of Bo", add_bos=True)])
    with torch.no_grad():
        ours = model(ids)
        trained_logits = result.model(ids)
        hf = AutoModelForCausalLM.from_pretrained(out).eval()(ids).logits
    torch.testing.assert_close(ours, trained_logits, rtol=0, atol=0)
    torch.testing.assert_close(hf, ours, rtol=1e-4, atol=1e-4)
    # The model learned the language: after "lives in" a town name is the likely continuation.
    prompt = tokenizer.encode("The cat of Ada lives in", add_bos=True)
    with torch.no_grad():
        probs = model(torch.tensor([prompt]))[0, -1].softmax(-1)
    town_first = {tokenizer.encode(" " + t)[0] for t in TOWNS}
    assert sum(float(probs[i]) for i in town_first) > 0.5


# ----------------------------------------------------------------------------- determinism and resume
def test_same_seed_same_losses_different_seed_different(tokenizer, corpus):
    def losses(seed):
        r = train(small_config(max_steps=20, seed=seed), corpus[0], corpus[1], tokenizer=tokenizer, device="cpu", progress=False)
        return [(h["train_loss"], h["eval_loss"]) for h in r.history]

    a, b, c = losses(0), losses(0), losses(1)
    assert a == b  # bit-identical on the CPU
    assert a != c


def test_resume_equals_uninterrupted(tmp_path, tokenizer, corpus):
    config = small_config(max_steps=30, eval_every=10, checkpoint_every=10, keep_checkpoints=5)
    full_dir = tmp_path / "full"
    full = train(config, corpus[0], corpus[1], tokenizer=tokenizer, out_dir=full_dir, device="cpu", progress=False)

    # A "crash" after step 10's checkpoint: only that checkpoint survives, then the run resumes.
    crashed = tmp_path / "crashed"
    shutil.copytree(full_dir / "checkpoints" / "step-000010", crashed / "checkpoints" / "step-000010")
    resumed = train(config, corpus[0], corpus[1], tokenizer=tokenizer, out_dir=crashed, resume=True, device="cpu", progress=False)

    def key(history):
        return [(h["step"], h["train_loss"], h["eval_loss"], h["lr"]) for h in history]

    assert key(resumed.history) == key(full.history)  # the first 10 steps from the checkpoint, the rest recomputed
    assert len(resumed.history) == 31
    for (name, p), q in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(p, q), name


def test_resume_refuses_changed_config_and_missing_checkpoint(tmp_path, tokenizer, corpus):
    out = tmp_path / "run"
    train(small_config(max_steps=10, checkpoint_every=5), corpus[0], tokenizer=tokenizer, out_dir=out, device="cpu", progress=False)
    with pytest.raises(ValueError, match=r"lr"):
        train(small_config(max_steps=10, lr=1e-2), corpus[0], tokenizer=tokenizer, out_dir=out, resume=True, device="cpu", progress=False)
    with pytest.raises(ValueError, match="no complete checkpoint"):
        train(small_config(), corpus[0], tokenizer=tokenizer, out_dir=tmp_path / "empty", resume=True, device="cpu", progress=False)
    # A finished cosine run cannot be extended: its decay would jump back up at the next step...
    cosine = tmp_path / "cosine"
    train(small_config(max_steps=10, checkpoint_every=5, warmup_steps=2), corpus[0], tokenizer=tokenizer, out_dir=cosine,
          device="cpu", progress=False)
    with pytest.raises(ValueError, match="the schedule would give"):
        train(small_config(max_steps=12, checkpoint_every=5, warmup_steps=2), corpus[0], tokenizer=tokenizer,
              out_dir=cosine, resume=True, device="cpu", progress=False)
    # ...a WSD run can, from a checkpoint in its stable phase, where a longer run took the same steps.
    wsd = tmp_path / "wsd"
    options = dict(checkpoint_every=5, keep_checkpoints=5, warmup_steps=2, schedule="wsd")
    train(small_config(max_steps=10, **options), corpus[0], tokenizer=tokenizer, out_dir=wsd, device="cpu", progress=False)
    shutil.rmtree(wsd / "checkpoints" / "step-000010")  # that one is inside the cool-down
    longer = train(small_config(max_steps=12, **options), corpus[0], tokenizer=tokenizer, out_dir=wsd, resume=True,
                   device="cpu", progress=False)
    assert [h["step"] for h in longer.history][-3:] == [10, 11, 12]


# ----------------------------------------------------------------------------- schedule, optimizer, losses
def test_lr_schedule_shape():
    c = TrainConfig(model="tiny-test", lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=111)
    lrs = [lr_at(s, c) for s in range(111)]
    assert lrs[0] == pytest.approx(1e-4)  # 1/10 of the peak, not 0
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))  # rising warm-up
    assert lrs[9] == pytest.approx(1e-3) and lrs[10] == pytest.approx(1e-3)  # peak
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # cosine decay never rises
    assert lrs[-1] == pytest.approx(1e-4)  # ends exactly at min_lr
    assert lrs[60] == pytest.approx(1e-4 + 0.5 * 9e-4)  # cosine half-way point is the mid value
    with pytest.raises(ValueError, match=r"step must be an integer in \[0, 110\]"):
        lr_at(111, c)


def test_wsd_schedule_holds_then_cools_down_by_one_minus_sqrt():
    c = TrainConfig(model="tiny-test", lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=111,
                    schedule="wsd", decay_fraction=0.2)
    lrs = [lr_at(s, c) for s in range(111)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)  # the same warm-up
    decay_start = 111 - round(0.2 * 111)  # 89
    assert all(lr == pytest.approx(1e-3) for lr in lrs[9:decay_start + 1])  # stable
    assert lrs[decay_start + 1] < 1e-3 and lrs[-1] == pytest.approx(1e-4)  # cools down to min_lr
    assert all(a >= b for a, b in zip(lrs[decay_start:], lrs[decay_start + 1:]))
    quarter = decay_start + (110 - decay_start) // 4  # progress 1/4: 1 - sqrt(1/4) = 1/2 of the way
    progress = (quarter - decay_start) / (110 - decay_start)
    assert lrs[quarter] == pytest.approx(1e-4 + 9e-4 * (1 - math.sqrt(progress)))
    for bad, match in ((dict(schedule="linear"), "schedule must be one of"),
                       (dict(decay_fraction=0.0), "decay_fraction must be a number in")):
        with pytest.raises(ValueError, match=match):
            TrainConfig(model="tiny-test", **bad)


def test_no_weight_decay_on_norms_biases_embeddings():
    cfg = ModelConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      max_position_embeddings=32, tie_word_embeddings=True, attention_bias=True)
    model = CausalLM(cfg)
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert "model.embed_tokens.weight" in skipped and not any("norm" in n or "bias" in n for n in decayed)
    assert "model.layers.0.self_attn.q_proj.weight" in decayed and "model.layers.0.mlp.down_proj.weight" in decayed
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))  # tied head counted once


def test_masked_loss_counts_only_masked_targets():
    torch.manual_seed(0)
    logits, targets = torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5))
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, 3:] = True
    mask[1, 1] = True
    direct = -torch.stack([logits[b, t].log_softmax(-1)[targets[b, t]] for b, t in mask.nonzero().tolist()]).mean()
    torch.testing.assert_close(next_token_loss(logits, targets, mask), direct)
    torch.testing.assert_close(next_token_loss(logits, targets), F.cross_entropy(logits.reshape(-1, 7), targets.reshape(-1)))
    assert float(next_token_loss(logits, targets, torch.zeros_like(mask))) == 0.0


def test_distillation_loss_matches_direct_computation():
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 11), torch.randn(2, 3, 11) * 2
    labels = torch.randint(0, 11, (2, 3))
    T, alpha = 3.0, 0.7
    kl = 0.0
    for b in range(2):
        for i in range(3):
            p = (t[b, i] / T).softmax(-1)
            q = (s[b, i] / T).softmax(-1)
            kl += float((p * (p.log() - q.log())).sum())
    ce = float(F.cross_entropy(s.reshape(-1, 11), labels.reshape(-1)))
    expected = alpha * T**2 * kl / 6 + (1 - alpha) * ce
    assert float(distillation_loss(s, t, T, alpha, labels)) == pytest.approx(expected, rel=1e-5)
    # Same student and teacher: no soft loss left; alpha=0 is plain cross-entropy.
    assert float(distillation_loss(s, s, T, 1.0, None)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_loss(s, t, T, 0.0, labels)) == pytest.approx(ce, rel=1e-6)
    # The T^2 factor keeps the soft-target gradient's size comparable across temperatures.
    grads = []
    for temp in (2.0, 8.0):
        x = s.clone().requires_grad_(True)
        distillation_loss(x, t, temp, 1.0, None).backward()
        grads.append(float(x.grad.norm()))
    assert 0.2 < grads[1] / grads[0] < 5
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(s, t, 0.0, 0.5, labels)
    with pytest.raises(ValueError, match="alpha"):
        distillation_loss(s, t, 2.0, 1.5, labels)
    with pytest.raises(ValueError, match="labels"):
        distillation_loss(s, t, 2.0, 0.5, None)


def test_training_with_a_teacher_moves_student_toward_it(tokenizer, corpus, trained):
    teacher = trained[0].model
    inputs = PackedDataset(corpus[1], 32).batch(0, 8)[0]

    def kl_to_teacher(model):
        with torch.no_grad():
            return float(distillation_loss(model(inputs), teacher(inputs), 1.0, 1.0, None))

    cfg = small_config(max_steps=100, distill_alpha=1.0, distill_temperature=1.0)
    torch.manual_seed(cfg.seed)  # the same init train() makes, to measure the starting distance
    start = CausalLM(build_model_config(cfg, tokenizer.vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=0))
    student = train(cfg, corpus[0], corpus[1], tokenizer=tokenizer, teacher=teacher, device="cpu", progress=False)
    # alpha=1: the student never sees a label, only the teacher's distributions, yet its
    # cross-entropy on held-out text falls, and its KL from the teacher shrinks several-fold.
    assert student.eval_losses[-1][1] < 0.6 * student.eval_losses[0][1]
    assert kl_to_teacher(student.model) < 0.3 * kl_to_teacher(start)


# ----------------------------------------------------------------------------- data
def test_packed_dataset_windows_and_deterministic_shuffle():
    docs = [[1, 10, 11, 2], [1, 20, 21, 22, 2], [1, 30, 2]]
    ds = PackedDataset(docs, seq_len=3, seed=5)
    stream = [t for d in docs for t in d]
    assert len(ds) == (len(stream) - 1) // 3 == 3
    for i in range(len(ds)):
        assert ds.window(i)[0].tolist() == stream[3 * i:3 * i + 4]  # windows overlap by one token
    x, y, m = ds.batch(0, 2)
    assert x.shape == y.shape == (2, 3) and m is None
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are inputs shifted by one
    # One epoch covers every window once; the same seed gives the same order; another seed another.
    epoch = torch.cat([ds.batch(s, 1)[0] for s in range(3)])
    assert sorted(map(tuple, epoch.tolist())) == sorted(tuple(ds.window(i)[0][:-1].tolist()) for i in range(3))
    assert torch.equal(PackedDataset(docs, 3, seed=5).batch(7, 2)[0], ds.batch(7, 2)[0])
    orders = {tuple(PackedDataset(docs, 3, seed=s).batch(0, 3)[0][:, 0].tolist()) for s in range(10)}
    assert len(orders) > 1


def test_packed_dataset_loss_mask_follows_targets():
    docs = [[1, 5, 6, 7, 2], [1, 8, 9, 2]]
    masks = [[0, 0, 0, 1, 1], [0, 0, 1, 1]]  # answers only
    ds = PackedDataset(docs, seq_len=8, loss_masks=masks)
    x, y, m = ds.batch(0, 1)
    assert y[0].tolist() == [5, 6, 7, 2, 1, 8, 9, 2]
    assert m[0].tolist() == [False, False, True, True, False, False, True, True]
    with pytest.raises(ValueError, match=r"loss_masks\[1\]"):
        PackedDataset(docs, 8, loss_masks=[[0] * 5, [0] * 3])


def test_packed_dataset_documents_are_never_cut():
    rng = random.Random(0)
    docs = [[1] + [rng.randrange(3, 50) for _ in range(rng.randrange(1, 14))] + [2] for _ in range(200)]
    ds = PackedDataset(docs, seq_len=63, seed=1, pack="documents", pad_id=0)
    seen = []
    for i in range(len(ds)):
        window, mask = ds.window(i)
        assert window.shape == (64,) and mask.shape == (63,)
        used = int(mask.sum()) + 1  # real tokens: the first is never a target, padding never is
        assert (window[used:] == 0).all() and mask[:used - 1].all() and not mask[used - 1:].any()
        # Split the window back into documents at each BOS: every one is a whole document.
        starts = [j for j in range(used) if window[j] == 1] + [used]
        assert starts[0] == 0
        seen += [tuple(window[a:b].tolist()) for a, b in zip(starts, starts[1:])]
    assert sorted(seen) == sorted(map(tuple, docs))  # each document exactly once, uncut
    assert 0 <= ds.padding_fraction < 0.05  # best fit leaves little room
    assert ds.padding_fraction == pytest.approx(1 - sum(map(len, docs)) / (64 * len(ds)))
    x, y, m = ds.batch(3, 4)
    assert x.shape == y.shape == m.shape == (4, 63) and torch.equal(x[:, 1:], y[:, :-1])
    # A fine-tuning mask travels with its document.
    masked = PackedDataset([[1, 5, 6, 2], [1, 7, 2]], 8, pack="documents", loss_masks=[[0, 0, 1, 1], [0, 1, 1]])
    window, mask = masked.window(0)
    assert window.tolist() == [1, 5, 6, 2, 1, 7, 2, 0, 0]
    assert mask.tolist() == [False, True, True, False, True, True, False, False]
    with pytest.raises(ValueError, match=r"documents\[1\] has 6 tokens, more than a window of seq_len \+ 1 = 5"):
        PackedDataset([[1, 2], [1, 3, 3, 3, 3, 2]], 4, pack="documents")
    with pytest.raises(ValueError, match="pack must be one of"):
        PackedDataset(docs, 15, pack="random")


def test_split_documents_is_seeded_and_disjoint():
    docs = [[i, i] for i in range(50)]
    tr, ev = split_documents(docs, 0.1, seed=0)
    assert len(ev) == 5 and len(tr) == 45
    assert not {tuple(d) for d in tr} & {tuple(d) for d in ev}
    assert split_documents(docs, 0.1, seed=0) == (tr, ev)


# ----------------------------------------------------------------------------- presets
def test_presets_build_and_sizes():
    assert {"tinyworld-main", "tinyworld-draft", "tiny-test"} <= set(PRESETS)
    counts = {}
    for name in ("tinyworld-main", "tinyworld-draft"):
        cfg = build_model_config(get_preset(name), vocab_size=4096, bos_token_id=1, eos_token_id=2)
        assert cfg.max_position_embeddings >= 1024 and cfg.num_key_value_heads < cfg.num_attention_heads  # GQA
        counts[name] = CausalLM(cfg, device="meta").num_parameters()
    assert 3e6 < counts["tinyworld-main"] < 1e7
    assert counts["tinyworld-main"] >= 5 * counts["tinyworld-draft"]
    for vocab in (2048, 8192):  # the draft stays >= 5x smaller whatever the tokenizer's size
        n = {k: CausalLM(build_model_config(get_preset(k), vocab), device="meta").num_parameters() for k in counts}
        assert n["tinyworld-main"] >= 5 * n["tinyworld-draft"]


# ----------------------------------------------------------------------------- bad input
def test_bad_input_raises_clear_errors(tmp_path, tokenizer, corpus):
    with pytest.raises(ValueError, match=r"unknown preset 'nope'; known presets: \['tiny-test', 'tinyworld-draft', 'tinyworld-main'\]"):
        get_preset("nope")
    with pytest.raises(ValueError, match="seed must be an integer"):
        small_config(seed=1.5)
    with pytest.raises(ValueError, match="seed must be an integer"):
        small_config(seed="0")
    with pytest.raises(ValueError, match=r"seq_len must be an integer >= 2, got 1"):
        small_config(seq_len=1)
    with pytest.raises(ValueError, match=r"min_lr must be a number in \[0.0, 0.001\]"):
        TrainConfig(lr=1e-3, min_lr=1e-2)
    with pytest.raises(ValueError, match="warmup_steps"):
        TrainConfig(max_steps=10, warmup_steps=11)
    with pytest.raises(ValueError, match="model must be a model preset name"):
        TrainConfig(model="gpt-5")
    with pytest.raises(ValueError, match="max_position_embeddings=128"):
        build_model_config(small_config(seq_len=256), 300)
    with pytest.raises(ValueError, match="fewer than one window"):
        PackedDataset([[1, 2, 3]], seq_len=8)
    with pytest.raises(ValueError, match=r"documents\[1\]"):
        PackedDataset([[1, 2, 3], []], seq_len=2)
    with pytest.raises(ValueError, match=r"token ids in \[0, 299\]"):
        train(small_config(), [[1, 2, 300, 4] * 20], tokenizer=tokenizer, device="cpu", progress=False)
    with pytest.raises(ValueError, match="vocabulary size"):
        train(small_config(), corpus[0], device="cpu", progress=False)
    with pytest.raises(ValueError, match="data file not found: .*missing.jsonl"):
        read_jsonl_texts(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": "no"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: .*\"text\""):
        read_jsonl_texts(bad)


# ----------------------------------------------------------------------------- command line
def test_cli_trains_resumes_and_validates_paths(tmp_path, tokenizer):
    tokenizer.save(tmp_path / "tok")
    data = tmp_path / "corpus.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in sentences(120, seed=4)))
    out = tmp_path / "out"
    args = ["--preset", "tiny-test", "--data", str(data), "--tokenizer", str(tmp_path / "tok" / "tokenizer.json"),
            "--out", str(out), "--max-steps", "12", "--eval-fraction", "0.1", "--no-progress"]
    result = main(args)
    assert result.history[-1]["step"] == 12 and (out / "model.safetensors").is_file()
    resumed = main([*args, "--resume"])  # from the final checkpoint: nothing left to do
    assert [h["step"] for h in resumed.history] == list(range(13))
    with pytest.raises(ValueError, match="the schedule would give"):  # a finished cosine cannot grow
        main([*args[:-4], "16", "--eval-fraction", "0.1", "--no-progress", "--resume"])
    with pytest.raises(ValueError, match="data file not found: .*nowhere.jsonl"):
        main([*args[:2], "--data", str(tmp_path / "nowhere.jsonl"), *args[4:]])
    with pytest.raises(ValueError, match="tokenizer file not found: .*none.json"):
        main([*args[:4], "--tokenizer", str(tmp_path / "none.json"), *args[6:]])
    with pytest.raises(ValueError, match="unknown preset"):
        main(["--preset", "huge", *args[2:]])
    smoke = main([*args[:6], "--out", str(tmp_path / "smoke"), "--max-steps", "3", "--no-progress"])  # below the warm-up
    assert smoke.history[-1]["step"] == 3 and smoke.history[1]["lr"] == get_preset("tiny-test").lr
    assert set(MODEL_PRESETS) >= {"tinyworld-main", "tinyworld-draft", "tiny-test"}
