"""llmbook.world.evaluate: the likelihood bookkeeping, the tool loop, the report and the CLI."""

import hashlib
import json
import math

import pytest
import torch
import torch.nn.functional as F

from llmbook.hub import ASSETS_DIR, load
from llmbook.world import FAMILIES, default_splits
from llmbook.world.checkers import run_action
from llmbook.world.grammar import QUESTION_TEMPLATES
import llmbook.world.evaluate as evaluate_module
from llmbook.world import evaluation_suites
from llmbook.world.evaluate import (
    TARGETS,
    EvalSettings,
    check_targets,
    document_nll,
    entropy_report,
    heldout_documents,
    main,
    react_questions,
    react_with_tools,
)
from llmbook.world.splits import DEFAULT_MIXTURE


@pytest.fixture(scope="module")
def draft():
    return load("tinyworld-draft", device="cpu")


@pytest.fixture(scope="module")
def documents():
    return heldout_documents(default_splits(0), seed=0, per_family=3)


def test_document_nll_is_the_sum_over_text_and_eos_and_ignores_batch_padding(draft):
    model, tok = draft
    texts = ["Mira lives in Tolby.", "Question: How old is Mira?\nAnswer: Mira is 40 years old.", "Compute 3 + 4.\nAnswer: 7"]
    batched = document_nll(model, tok, texts, batch_size=3)
    for text, (nats, n) in zip(texts, batched):
        ids = torch.tensor([tok.encode(text, add_bos=True) + [tok.eos_token_id]])
        with torch.no_grad():
            logits = model(ids)
        expected = F.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum").item()
        assert n == ids.shape[1] - 1
        assert nats == pytest.approx(expected, rel=1e-5)
        assert document_nll(model, tok, [text], batch_size=1)[0][0] == pytest.approx(nats, rel=1e-5)


def test_heldout_documents_cover_every_family_and_are_not_in_the_corpus_stream(documents):
    assert sorted({d.family for d in documents}) == sorted(FAMILIES)
    assert all(len([d for d in documents if d.family == f]) == 3 for f in FAMILIES)


def test_entropy_floor_includes_the_family_choice_and_all_is_the_mixture_average(draft, documents):
    model, tok = draft
    report = entropy_report(model, tok, documents)
    nll = document_nll(model, tok, [d.text for d in documents])
    for family in FAMILIES:
        rows = [(n, d) for n, d in zip(nll, documents) if d.family == family]
        tokens = sum(n[1] for n, _ in rows)
        floor = -sum(d.logprob + math.log(DEFAULT_MIXTURE[family]) for _, d in rows) / tokens
        assert report[family]["floor"] == pytest.approx(floor)
        assert report[family]["gap"] == pytest.approx(report[family]["model"] - floor)
    # A model cannot beat the generator on average: the gap is a KL divergence (checked on all docs).
    assert report["all"]["gap"] > 0
    per_family_min = min(report[f]["floor"] for f in FAMILIES)
    per_family_max = max(report[f]["floor"] for f in FAMILIES)
    assert per_family_min <= report["all"]["floor"] <= per_family_max


def test_entropy_report_refuses_to_skip_a_family(draft, documents):
    model, tok = draft
    with pytest.raises(ValueError, match="missing.*'story'"):
        entropy_report(model, tok, [d for d in documents if d.family != "story"])


def test_tool_loop_writes_real_tool_outputs_as_observations(draft):
    model, tok = draft
    splits = default_splits(0)
    questions = react_questions(splits, seed=0, n=3)
    qs = [q["question"] for kind in questions.values() for q in kind]
    traces = react_with_tools(model, tok, qs, splits.kb, max_steps=2)
    assert len(traces) == len(qs)
    n_observations = 0
    for question, trace in zip(qs, traces):
        lines = trace.split("\n")
        assert lines[0] == f"Question: {question}"
        for i, line in enumerate(lines):
            if line.startswith("Observation: "):
                n_observations += 1
                action = lines[i - 1].removeprefix("Action: ")
                try:
                    expected = run_action(action, splits.kb)
                except ValueError:
                    expected = "error"
                assert line == f"Observation: {expected}"
    assert n_observations > 0


def test_react_questions_are_multi_digit_products_hidden_facts_and_strangers():
    splits = default_splits(0)
    questions = react_questions(splits, seed=0, n=20)
    for q in questions["product"]:
        a, b = map(int, q["question"].removeprefix("What is ").removesuffix("?").split(" * "))
        assert a >= 10 and b >= 10 and q["answer"] == str(a * b)
        assert q["direct_prompt"] == f"Compute {a} * {b}.\nAnswer:"
    assert len(questions["lookup_hidden_fact"]) == 20
    assert all((q["subject"], q["attribute"]) in splits.hidden_facts for q in questions["lookup_hidden_fact"])
    assert all(q["subject"] in splits.heldout_people for q in questions["lookup_heldout_person"])
    assert react_questions(splits, seed=0, n=20) == questions


@pytest.mark.parametrize("field,value", [("n_per_suite", 0), ("docs_per_family", -1), ("batch_size", 1.5), ("seed", "0")])
def test_settings_validate(field, value):
    with pytest.raises(ValueError, match=field):
        EvalSettings(**{field: value})


def test_check_targets_compares_in_the_right_direction():
    report = {"entropy": {"all": {"gap": 0.2}, "qa": {"gap": 0.1}},
              "qa": {"qa_seen": {"accuracy": 0.97, "accuracy_se": 0.01,
                                 "by_kind": {"pet": {"accuracy": 0.6}, "town": {"accuracy": 0.99}}}},
              "card": {"schema_ok_rate": 0.9},
              "react": {"with_tools": {"target_set": {"well_formed_rate": 0.5, "accuracy": 0.95},
                                       "lookup_subject_rate": 0.96}},
              "arithmetic": {"scratchpad": {"accuracy": 0.45}, "scratchpad_gain": 0.15}}
    result = check_targets(report)
    assert set(TARGETS) < set(result)
    met = {name: r["met"] for name, r in result.items()}
    assert met == {"entropy gap, all families (nats/token)": False, "fact QA on training facts (accuracy)": True,
                   "JSON cards at T=1 (valid JSON matching the schema)": True,
                   "lookup[...] names the asked entity (tools in the loop)": True,
                   "ReAct traces well-formed (tools in the loop)": False,
                   "ReAct correct with tools (held-out products and hidden facts)": True,
                   "arithmetic with the scratchpad (accuracy)": True,
                   "scratchpad minus direct answers (accuracy points)": False,
                   "entropy gap, qa (nats/token)": True,
                   "fact QA on training facts, pet questions (accuracy)": False,
                   "fact QA on training facts, town questions (accuracy)": True}
    assert result["fact QA on training facts (accuracy)"]["se"] == 0.01
    assert "se" not in result["JSON cards at T=1 (valid JSON matching the schema)"]


def test_cli_writes_a_report_with_every_section_and_family(tmp_path):
    out = tmp_path / "report.json"
    main(["--model", "tinyworld-draft", "--draft", "tinyworld-draft", "--out", str(out), "--docs-per-family", "2",
          "--n-per-suite", "2", "--n-react", "2", "--n-arithmetic", "2", "--device", "cpu"])
    report = json.loads(out.read_text())
    assert {"entropy", "qa", "card", "react", "arithmetic", "retrieval", "story", "draft", "targets"} <= set(report)
    assert set(FAMILIES) | {"all"} == set(report["entropy"])
    assert report["draft"]["top1_agreement"] == 1.0  # a model agrees with itself
    assert report["react"]["with_tools"]["target_set"]["n"] == 4
    assert report["react"]["with_tools"]["lookup_subject_n"] == 4  # both lookup kinds, 2 each
    assert report["react"]["with_tools"]["lookup_hidden_fact"]["lookup_subject_rate_se"] >= 0
    assert set(report["qa"]["qa_seen"]["by_kind"]) == set(QUESTION_TEMPLATES)  # every kind, each on its own suite
    assert all(r["n"] == 2 for r in report["qa"]["qa_seen"]["by_kind"].values())
    assert report["qa"]["qa_seen"]["accuracy_se"] >= 0 and "by_kind" in report["qa"]["qa_seen"]
    for name in ("qa_hidden_facts", "qa_heldout_people", "qa_new_knowledge"):
        people = report["qa"][name]["person_subjects"]
        assert people["n"] == report["qa"][name]["subject_tokens_n"] <= report["qa"][name]["n"]
        assert {"accuracy", "asserts_specific_answer", "hallucination_rate"} <= set(people)
    completion = report["qa"]["fact_completion"]
    assert sum(r["n"] for r in completion["by_kind"].values()) == completion["n"] == 2
    assert 0 <= completion["exact_match_rate"] <= completion["accuracy"] <= 1
    assert report["weights_sha256"] == hashlib.sha256(
        (ASSETS_DIR / "tinyworld-draft" / "model.safetensors").read_bytes()).hexdigest()


def test_fact_completion_is_graded_by_claim_not_by_exact_match(monkeypatch):
    splits = default_splits(0)
    items = [it for it in evaluation_suites(splits, 0, 300)["fact_completion"]]
    friend = next(it for it in items if it.meta["fact"].startswith("friend:")
                  and len(splits.kb.get(it.meta["subject"], "friends")) > 1)
    town = next(it for it in items if it.meta["fact"] == "town")
    other_friend = next(f for f in splits.kb.get(friend.meta["subject"], "friends") if f != friend.expected[:-1])
    wrong_town = next(t for t in splits.kb.towns if f"{t}." != town.expected)
    cases = [(friend, f" {other_friend}."), (friend, f" {friend.expected}"), (town, f" {wrong_town}."),
             (town, " " + town.expected + " Mira is 40 years old."), (town, " the market.")]
    answers = iter([a for _, a in cases])
    monkeypatch.setattr(evaluate_module, "complete", lambda *args, **kwargs: [next(answers) for _ in cases])
    report = evaluate_module._fact_completion(None, None, splits, [it for it, _ in cases], EvalSettings())
    # another true friend is right (exact match said wrong); a false or unparsed value is wrong;
    # only the first sentence is graded
    assert report["n"] == 5 and report["accuracy"] == pytest.approx(3 / 5)
    assert report["exact_match_rate"] == pytest.approx(1 / 5)
    assert report["by_kind"]["friend"] == {"n": 2, "accuracy": 1.0, "accuracy_se": 0.0}
    assert report["by_kind"]["town"]["n"] == 3 and report["by_kind"]["town"]["accuracy"] == pytest.approx(1 / 3)


def test_cli_names_an_unknown_model(tmp_path):
    with pytest.raises(ValueError, match="not-a-model-dir"):
        main(["--model", str(tmp_path / "not-a-model-dir")])
