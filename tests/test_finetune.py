"""llmbook.finetune: the LoRA-rank experiment's data, training, ΔW analysis and committed results."""

from __future__ import annotations

import json
import math

import pytest
import torch

from llmbook import finetune as ft
from llmbook import hub
from llmbook.lora import lora_layers
from llmbook.tokenizer import Tokenizer
from llmbook.world import default_splits

RESULTS = hub.ASSETS_DIR / "results" / "lora_ranks.json"


@pytest.fixture(scope="module")
def base():
    model, tok = hub.load("tinyworld-main", device="cpu")
    return model, tok


@pytest.fixture(scope="module")
def small_data():
    return ft.new_knowledge_data(default_splits(0), seed=0, n_val_people=1, n_people=3)


def _dataset(data, tok, model):
    docs, masks = ft.encode_texts(data.train_texts, tok)
    return ft.one_document_per_window(docs, masks, 0, model.config.vocab_size, tok.pad_token_id or 0)


# ---------------------------------------------------------------------------- data
def test_people_and_phrasings_are_kept_apart():
    splits = default_splits(0)
    data = ft.new_knowledge_data(splits, seed=0, n_people=None, n_val_people=12)
    # No person taught was ever in the training corpus; validation and test people are disjoint.
    assert not set(data.people) & set(splits.train_people)
    assert set(data.val_people) | set(data.test_people) == set(data.people)
    assert not set(data.val_people) & set(data.test_people)
    assert len(data.people) == 80 and len(data.test_items) == 68 * len(ft.QA_KINDS)
    assert len(data.train_texts) == len(data.people) * len(ft.QA_KINDS)
    # Every learn item opens a fine-tuning document ...
    for _, prompt, _, _ in data.test_items + data.val_items:
        assert sum(text.startswith(prompt + " ") for text in data.train_texts) == 1, prompt
    # ... and no generalize phrasing (QA or story) occurs in any fine-tuning document.
    for text in data.train_texts:
        assert "Question:" not in text and "Answer:" not in text
    for name, (template, _) in ft.GENERALIZE_PHRASINGS.items():
        lead = template.replace("{person}", "").strip()
        assert not any(lead in text for text in data.train_texts), name
    # The generalize reference asks about training people only; the defaults are a subset.
    names = {prompt.replace("Every morning, ", "").replace("The favourite food of ", "").split()[0]
             for _, prompt, _, _ in data.generalize_reference}
    assert names <= set(splits.train_people)
    small = ft.new_knowledge_data(splits, seed=0)
    assert set(small.people) <= set(data.people) and len(small.people) == (ft.DEFAULT_PEOPLE or 80)


def test_loss_mask_covers_the_tokens_after_the_subject(base):
    _, tok = base
    (ids,), (mask,) = ft.encode_texts(["Nolo lives in Lindale."], tok)
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.decode(ids[1:-1]) == "Nolo lives in Lindale."
    head = len(tok.encode("Nolo", add_bos=True))
    assert mask == [0] * head + [1] * (len(ids) - head)
    assert tok.decode([i for i, m in zip(ids, mask) if m][:-1]) == " lives in Lindale."
    with pytest.raises(ValueError, match="sentences of the world's grammar"):
        ft.encode_texts(["Nolo sings."], tok)


def test_one_document_per_window(base):
    _, tok = base
    docs, masks = ft.encode_texts(["Nolo lives in Lindale.", "Gara likes plums."], tok)
    dataset = ft.one_document_per_window(docs, masks, 0, 2000, 0)
    assert len(dataset) == 2 and dataset.seq_len == max(map(len, docs)) - 1
    with pytest.raises(ValueError, match="seq_len must be an integer in"):
        ft.one_document_per_window(docs, masks, 0, 2000, 0, seq_len=64)  # two documents would share a window


# ---------------------------------------------------------------------------- ΔW analysis
def test_delta_analysis_bounds_and_exact_cases():
    g = torch.Generator().manual_seed(0)
    for r in (1, 2, 5, 17):
        delta = torch.randn(40, r, generator=g, dtype=torch.float64) @ torch.randn(r, 30, generator=g, dtype=torch.float64)
        a = ft.delta_analysis(delta, top=8)
        assert a["nuclear_over_frobenius"] <= math.sqrt(r) + 1e-9
        assert 1.0 - 1e-9 <= a["stable_rank"] <= r + 1e-9
        assert len(a["singular_values"]) == min(8, 30)
        assert a["singular_values"] == sorted(a["singular_values"], reverse=True)
    # Equal singular values reach both bounds: the bound is sqrt(r), not r.
    q, _ = torch.linalg.qr(torch.randn(20, 20, generator=g, dtype=torch.float64))
    a = ft.delta_analysis(3.0 * q[:, :4] @ q[:, 4:8].T)  # four singular values, all 3
    assert a["nuclear_over_frobenius"] == pytest.approx(2.0, abs=1e-9)
    assert a["stable_rank"] == pytest.approx(4.0, abs=1e-9)
    assert math.isnan(ft.delta_analysis(torch.zeros(3, 3))["stable_rank"])
    with pytest.raises(ValueError, match="delta must be a 2-D tensor"):
        ft.delta_analysis(torch.zeros(3))
    with pytest.raises(ValueError, match="top must be"):
        ft.delta_analysis(torch.zeros(3, 3), top=0)


# ---------------------------------------------------------------------------- training
def test_a_small_finetune_learns_the_new_facts(base, small_data):
    model, tok = base
    splits = default_splits(0)
    items = small_data.test_items
    before = ft._phrased_correct(model, tok, items, splits.kb, 32)
    dataset = _dataset(small_data, tok, model)
    tuned, deltas, record = ft.finetune(model, dataset, rank=None, lr=1e-3, steps=40, batch_size=15)
    after = ft._phrased_correct(tuned, tok, items, splits.kb, 32)
    # 15 facts, 40 passes over them: the fine-tuned model recalls at least 3 more of the 10 test facts.
    assert sum(after) >= sum(before) + 3, (sum(before), sum(after), len(items))
    assert record["train_loss_last_10"] < record["train_loss_first"]
    # Full fine-tuning: ΔW of all 7 linear layers of every decoder layer, generically full rank.
    assert len(deltas) == 7 * model.config.num_hidden_layers
    assert all(d.abs().sum() > 0 for d in deltas.values())
    # The base model is untouched.
    assert ft._phrased_correct(model, tok, items, splits.kb, 32) == before


def test_lora_finetune_updates_only_adapters(base, small_data):
    model, tok = base
    dataset = _dataset(small_data, tok, model)
    tuned, deltas, record = ft.finetune(model, dataset, rank=2, lr=1e-2, steps=4, batch_size=4)
    layers = lora_layers(tuned)
    assert set(deltas) == set(layers) and len(layers) == 7 * model.config.num_hidden_layers
    assert record["trainable_parameters"] == sum(2 * (m.in_features + m.out_features) for m in layers.values())
    for name, d in deltas.items():
        assert torch.linalg.matrix_rank(d.double()) <= 2, name
        a = ft.delta_analysis(d)
        assert a["nuclear_over_frobenius"] <= math.sqrt(2) + 1e-6 and a["stable_rank"] <= 2 + 1e-6
    base_weights = dict(model.named_parameters())
    for name, p in tuned.named_parameters():
        if "lora_" not in name:
            assert torch.equal(p, base_weights[name.replace(".base.", ".")]), name


def test_name_rows_train_beside_the_adapters_and_nothing_else(base, small_data):
    model, tok = base
    dataset = _dataset(small_data, tok, model)
    ids = ft.name_token_ids(tok, small_data.people)
    # The names' tokens as they are spelled mid-sentence are the same ones.
    for person in small_data.people:
        assert set(tok.encode(f"Where does {person} live?", add_bos=False)) >= set(tok.encode(person, add_bos=False))
    embedding = model.model.embed_tokens.weight
    d = embedding.shape[1]
    tuned, deltas, record = ft.finetune(model, dataset, rank=2, lr=1e-2, steps=4, batch_size=4, train_token_ids=ids)
    layers = lora_layers(tuned)
    assert record["trainable_parameters"] == (sum(2 * (m.in_features + m.out_features) for m in layers.values())
                                              + len(ids) * d)
    moved = (tuned.model.embed_tokens.weight.detach() != embedding.detach()).any(dim=1)
    assert set(torch.nonzero(moved).flatten().tolist()) == set(ids)  # those rows, and only those
    # Rank 0: the rows alone, no adapter and no other weight.
    rows_only, deltas0, record0 = ft.finetune(model, dataset, rank=0, lr=1e-2, steps=4, batch_size=4,
                                              train_token_ids=ids)
    assert not lora_layers(rows_only) and deltas0 == {} and record0["trainable_parameters"] == len(ids) * d
    changed = {n for n, p in rows_only.named_parameters() if not torch.equal(p, dict(model.named_parameters())[n])}
    assert changed == {"model.embed_tokens.weight"}
    with pytest.raises(ValueError, match="rank 0 trains only the embedding rows"):
        ft.finetune(model, dataset, rank=0, lr=1e-2, steps=1, batch_size=1)
    with pytest.raises(ValueError, match=r"train_token_ids\[0\] must be an integer"):
        ft.finetune(model, dataset, rank=2, lr=1e-2, steps=1, batch_size=1, train_token_ids=[10**6])
    with pytest.raises(ValueError, match="rank must be an integer >= 0"):
        ft.finetune(model, dataset, rank=-1, lr=1e-2, steps=1, batch_size=1)


def test_choose_winner_keeps_to_the_forgetting_budget_and_breaks_ties_towards_less_forgetting():
    def run(lr, acc, se, dnll, method="r=1"):
        return {"method": method, "lr": lr, "seed": 0, "learn_val": {"accuracy": acc, "accuracy_se": se},
                "forget_nll_val": {"mean": dnll}}

    runs = [run(1e-3, 0.50, 0.05, 0.01), run(3e-3, 0.53, 0.05, 0.05), run(1e-2, 0.60, 0.05, 0.20)]
    assert ft.choose_winner(runs, forget_budget=1.0)["lr"] == 1e-2  # the others are more than one SE below
    # With the default budget (0.1 nats per token) the 1e-2 run forgot too much; of the two left,
    # 0.50 and 0.53 tie within a standard error and 1e-3 forgot less ...
    assert ft.FORGET_BUDGET == 0.1 and ft.choose_winner(runs)["lr"] == 1e-3
    assert ft.choose_winner(runs, forget_budget=0.06)["lr"] == 1e-3
    runs[2] = run(1e-2, 0.56, 0.05, 0.20)
    assert ft.choose_winner(runs, forget_budget=1.0)["lr"] == 3e-3  # 0.53 and 0.56 tie; 3e-3 forgets less
    # ... and with no run within the budget, the least forgetting one.
    assert ft.choose_winner(runs, forget_budget=0.001)["lr"] == 1e-3
    winners = ft.select_winners(runs + [run(1e-4, 0.1, 0.05, 0.0, "full")], forget_budget=0.001)
    assert winners["r=1"] == {"lr": 1e-3, "seed": 0, "lr_at_grid_edge": True, "within_budget": False}
    assert winners["full"]["within_budget"]
    with pytest.raises(ValueError, match="runs must not be empty"):
        ft.choose_winner([])
    with pytest.raises(ValueError, match="forget_budget must be a number of nats per token > 0"):
        ft.choose_winner(runs, forget_budget=0)


def test_reselect_rewrites_only_the_winners(tmp_path, results):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(results))
    again = ft.reselect(path, forget_budget=1e9)
    assert again["runs"] == results["runs"] and again["settings"]["forget_budget"] == 1e9
    # With no budget to speak of, each method's winner is the best validation learn (up to ties).
    for method, w in again["winners"].items():
        mine = [r for r in results["runs"] if r["method"] == method]
        best = max(r["learn_val"]["accuracy"] for r in mine)
        chosen = next(r for r in mine if r["lr"] == w["lr"])
        assert chosen["learn_val"]["accuracy"] >= best - chosen["learn_val"]["accuracy_se"] - 1e-12
    with pytest.raises(ValueError, match="results must be a lora-ranks result file"):
        ft.reselect(tmp_path / "missing.json")


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, message", [
    (dict(ranks=[0]), r"ranks\[0\] must be an integer in \[1, 64\]"),
    (dict(ranks=[65]), r"ranks\[0\] must be an integer in \[1, 64\]"),
    (dict(ranks=[2, 2]), "ranks must not repeat"),
    (dict(lora_lrs=[0.0]), r"lora_lrs\[0\] must be a learning rate in \(0, 1\)"),
    (dict(full_lrs=[]), "full_lrs must be a non-empty sequence"),
    (dict(steps=0), "steps must be an integer >= 1"),
    (dict(ranks=[], full_lrs=None), "nothing to train"),
    (dict(rows_lrs=[]), "rows_lrs must be a non-empty sequence"),
    (dict(control_rank=0), r"control_rank must be an integer in \[1, 64\]"),
    (dict(rows_first_lr=2.0), r"rows_first_lr must be a learning rate in \(0, 1\)"),
    (dict(forget_budget=0.0), "forget_budget must be a number of nats per token > 0"),
])
def test_bad_arguments_are_refused(base, kwargs, message):
    model, tok = base
    with pytest.raises(ValueError, match=message):
        ft.run_lora_ranks(model, tok, **kwargs)


def test_bad_targets_and_data_arguments(base, small_data):
    model, tok = base
    dataset = _dataset(small_data, tok, model)
    with pytest.raises(ValueError, match="target_modules has unknown name"):
        ft.finetune(model, dataset, rank=2, lr=1e-2, steps=1, batch_size=1, target_modules=("qkv",))
    with pytest.raises(ValueError, match=r"r must be in \[1, 64\]"):
        ft.finetune(model, dataset, rank=65, lr=1e-2, steps=1, batch_size=1)
    with pytest.raises(ValueError, match="n_val_people must be an integer"):
        ft.new_knowledge_data(default_splits(0), n_val_people=3, n_people=3)
    with pytest.raises(ValueError, match="splits must be a Splits"):
        ft.new_knowledge_data("world")


def test_command_line_checks_arguments_before_loading():
    with pytest.raises(ValueError, match=r"ranks\[0\] must be an integer >= 1"):
        ft.main(["lora-ranks", "--out", "/tmp/never.json", "--ranks", "0"])
    with pytest.raises(ValueError, match=r"lora_lrs\[0\] must be a learning rate"):
        ft.main(["lora-ranks", "--out", "/tmp/never.json", "--lora-lrs", "2"])
    with pytest.raises(ValueError, match="control_rank must be an integer >= 1"):
        ft.main(["lora-ranks", "--out", "/tmp/never.json", "--control-rank", "0"])


# ---------------------------------------------------------------------------- committed results
@pytest.fixture(scope="module")
def results():
    if not RESULTS.exists():
        pytest.skip("lora_ranks.json not committed yet")
    return json.loads(RESULTS.read_text())


def test_committed_results_used_the_commands_defaults(results):
    s = results["settings"]
    assert s["ranks"] == list(ft.DEFAULT_RANKS)
    assert s["lora_lrs"] == list(ft.DEFAULT_LORA_LRS) and s["full_lrs"] == list(ft.DEFAULT_FULL_LRS)
    assert s["rows_lrs"] == list(ft.DEFAULT_ROWS_LRS) and s["control_rank"] == ft.CONTROL_RANK
    assert (s["steps"], s["batch_size"], s["seed"]) == (ft.DEFAULT_STEPS, ft.DEFAULT_BATCH, 0)
    assert s["alpha_over_r"] == ft.ALPHA_OVER_R and s["target_modules"] == list(ft.LORA_TARGETS)
    assert (s["n_people"], s["n_val_people"], s["n_qa_seen"]) == (ft.DEFAULT_PEOPLE, ft.DEFAULT_VAL_PEOPLE, 300)
    # The world and the data the run used are the ones this code builds today.
    data = ft.new_knowledge_data(default_splits(0), 0, s["n_val_people"], s["n_people"])
    assert s["data"] == json.loads(json.dumps(data.summary()))
    # The default window is the longest document's: one document per window.
    assert ft.DEFAULT_SEQ_LEN is None
    docs, _ = ft.encode_texts(data.train_texts, Tokenizer.from_file(hub.ASSETS_DIR / "tinyworld-main"))
    assert s["seq_len"] == max(map(len, docs)) - 1 and s["windows_per_epoch"] == len(docs)


def test_committed_results_are_complete_and_consistent(results):
    s = results["settings"]
    expected = ([("rows", lr) for lr in s["rows_lrs"]] + [(f"r={r}", lr) for r in s["ranks"] for lr in s["lora_lrs"]]
                + [(f"r={s['control_rank']} frozen", lr) for lr in s["lora_lrs"]] + [("full", lr) for lr in s["full_lrs"]])
    assert [(r["method"], r["lr"]) for r in results["runs"]] == expected
    assert s["forget_budget"] == ft.FORGET_BUDGET and s["selection"] == ft.SELECTION_RULE
    assert results["winners"] == ft.select_winners(results["runs"], s["forget_budget"])
    for run in results["runs"] + results["repeats"]:
        assert run["learn"]["n"] == s["data"]["n_test_questions"]
        assert run["name_rows"] == (run["method"] == "rows" or run["method"].startswith("r=")
                                    and not run["method"].endswith("frozen"))
        assert run["qa_seen"]["n"] == s["n_qa_seen"]
        for name, a in run["delta"].items():
            rank = run["rank"] if run["rank"] is not None else min(a["shape"])
            # The math: ||ΔW||_* / ||ΔW||_F <= sqrt(rank) and stable rank <= rank, on every learned ΔW.
            assert a["nuclear_over_frobenius"] <= math.sqrt(rank) * (1 + 1e-6), (run["method"], name)
            assert a["stable_rank"] <= rank * (1 + 1e-6), (run["method"], name)


def test_committed_smollm2_results_used_the_commands_defaults():
    path = hub.ASSETS_DIR / "results" / "lora_smollm2.json"
    if not path.exists():
        pytest.skip("lora_smollm2.json not committed yet")
    results = json.loads(path.read_text())
    s = results["settings"]
    assert s["ranks"] == list(ft.SMOLLM2_RANKS) and s["lrs"] == list(ft.SMOLLM2_LRS)
    assert (s["steps"], s["batch_size"], s["n_people"], s["seed"]) == (ft.SMOLLM2_STEPS, ft.SMOLLM2_BATCH,
                                                                        ft.SMOLLM2_PEOPLE, 0)
    assert s["model"] == "smollm2-135m-instruct" and s["n_known_facts"] == len(ft.KNOWN_FACTS)
    assert [(r["rank"], r["lr"]) for r in results["runs"]] == [(r, lr) for r in s["ranks"] for lr in s["lrs"]]
    for run in results["runs"]:
        assert run["learn"]["n"] == s["n_learn"] == 5 * s["n_people"]
        assert run["delta_summary"]["nuclear_over_frobenius_max"] <= math.sqrt(run["rank"]) * (1 + 1e-6)
        assert run["delta_summary"]["stable_rank_max"] <= run["rank"] * (1 + 1e-6)


def test_committed_short_budget_results_are_the_documented_command():
    """lora_ranks_16.json: the command in the module's docstring and the README (16 people, 60 passes)."""
    path = hub.ASSETS_DIR / "results" / "lora_ranks_16.json"
    if not path.exists():
        pytest.skip("lora_ranks_16.json not committed yet")
    short = json.loads(path.read_text())
    s = short["settings"]
    assert (s["n_people"], s["n_val_people"], s["ranks"]) == (16, 4, [8])
    assert (s["lora_lrs"], s["full_lrs"], s["rows_lrs"], s["control_rank"]) == ([3e-4, 1e-3], [1e-4, 3e-4], None, None)
    assert (s["steps"], s["batch_size"], s["seed"]) == (ft.DEFAULT_STEPS, ft.DEFAULT_BATCH, 0)
    assert s["forget_budget"] == ft.FORGET_BUDGET and short["winners"] == ft.select_winners(short["runs"])
    assert [(r["method"], r["lr"]) for r in short["runs"]] == [("r=8", 3e-4), ("r=8", 1e-3), ("full", 1e-4), ("full", 3e-4)]
    assert all(r["learn"]["n"] == s["data"]["n_test_questions"] == 60 for r in short["runs"])
    assert "lora_ranks_16.json" in (ft.__doc__ or "")


def test_committed_rows_first_results_are_the_documented_command():
    """lora_ranks_rows_first.json: the names' rows trained first, then every rank from them, frozen."""
    path = hub.ASSETS_DIR / "results" / "lora_ranks_rows_first.json"
    if not path.exists():
        pytest.skip("lora_ranks_rows_first.json not committed yet")
    rf = json.loads(path.read_text())
    s = rf["settings"]
    assert (s["ranks"], s["lora_lrs"], s["rows_first_lr"]) == ([1, 8, 64], list(ft.DEFAULT_LORA_LRS), 1e-2)
    assert (s["full_lrs"], s["rows_lrs"], s["control_rank"]) == (None, None, None)
    assert (s["n_people"], s["steps"], s["seed"]) == (ft.DEFAULT_PEOPLE, ft.DEFAULT_STEPS, 0)
    assert rf["rows_first"]["method"] == "rows first" and rf["rows_first"]["rank"] == 0
    assert [(r["method"], r["lr"]) for r in rf["runs"]] == [(f"r={r}", lr) for r in (1, 8, 64) for lr in s["lora_lrs"]]
    assert not any(r["name_rows"] for r in rf["runs"])  # the rows stay as stage 1 left them
    assert rf["winners"] == ft.select_winners(rf["runs"], s["forget_budget"])
    assert "lora_ranks_rows_first.json" in (ft.__doc__ or "")
