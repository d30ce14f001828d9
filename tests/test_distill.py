"""Distillation by temperature: the experiment runs end to end, reproduces, and T really reaches the loss.

The shipped draft model plays the teacher and the ``tiny-test`` preset the student, on a budget of
seconds: the tests check the experiment's machinery, not the chapter's conclusions.
"""

from __future__ import annotations

import json
import math

import pytest

from llmbook import hub
from llmbook.distill import compare_with_teacher, main, run_distillation
from llmbook.world import default_splits
from llmbook.world.evaluate import document_nll, heldout_documents

SMALL = dict(student="tiny-test", steps=20, n_train_docs=200, n_eval_docs_per_family=3, progress=False)


@pytest.fixture(scope="module")
def teacher():
    return hub.load("tinyworld-draft", device="cpu")


@pytest.fixture(scope="module")
def results(teacher):
    model, tokenizer = teacher
    return run_distillation(model, tokenizer, temperatures=(1.0, 4.0), **SMALL)


def test_result_structure_and_json(results):
    assert list(results["runs"]) == ["hard", "T=1", "T=4"]
    settings = results["settings"]
    assert settings["student"] == "tiny-test" and settings["steps"] == 20 and settings["alpha"] == 1.0
    assert settings["temperatures"] == [1.0, 4.0] and settings["n_train_tokens"] > 0
    n_tokens = results["reference"]["teacher"]["n_tokens"]
    for label, run in results["runs"].items():
        assert run["wall_s"] > 0 and run["train_tokens_per_s"] > 0
        assert run["n_tokens"] == n_tokens  # every student is scored on the same held-out tokens
        assert math.isfinite(run["cross_entropy"]) and run["kl_from_teacher"] >= 0
        assert 0 <= run["top1_agreement"] <= 1
        steps = [s for s, _ in run["eval_history"]]
        assert steps[0] == 0 and steps[-1] == 20 and steps == sorted(steps)
    assert results["runs"]["T=1"]["temperature"] == 1.0 and results["runs"]["hard"]["temperature"] is None
    assert json.loads(json.dumps(results)) == results


def test_all_runs_start_from_the_same_student(results):
    # Same seed, same init, same held-out windows: the loss before the first step is identical.
    first = {run["eval_history"][0][1] for run in results["runs"].values()}
    assert len(first) == 1


def test_hard_run_reproduces_bit_for_bit(teacher, results):
    model, tokenizer = teacher
    again = run_distillation(model, tokenizer, temperatures=(), hard_baseline=True, **SMALL)
    timings = ("wall_s", "train_tokens_per_s")
    a, b = ({k: v for k, v in r["runs"]["hard"].items() if k not in timings} for r in (results, again))
    assert a == b
    assert again["reference"] == results["reference"]


def test_distilled_students_agree_with_the_teacher_more_than_the_untrained_one(results):
    init = results["reference"]["init"]
    for label in ("T=1", "T=4"):
        run = results["runs"][label]
        assert run["top1_agreement"] > init["top1_agreement"]
        assert run["kl_from_teacher"] < init["kl_from_teacher"]
    # Even 20 steps of a tiny student leave it far from the teacher.
    assert results["reference"]["teacher"]["cross_entropy"] < results["runs"]["T=1"]["cross_entropy"]


def test_temperature_reaches_the_loss(results):
    h1, h4 = results["runs"]["T=1"]["eval_history"], results["runs"]["T=4"]["eval_history"]
    assert h1[0] == h4[0]
    assert h1[1:] != h4[1:]
    assert results["runs"]["T=1"]["kl_from_teacher"] != results["runs"]["T=4"]["kl_from_teacher"]


def test_compare_with_teacher_matches_document_nll(teacher):
    model, tokenizer = teacher
    texts = [d.text for d in heldout_documents(default_splits(0), 0, 2)]
    scores = compare_with_teacher(model, {"self": model}, tokenizer, texts)
    assert scores["self"]["kl_from_teacher"] == pytest.approx(0.0, abs=1e-6)
    assert scores["self"]["top1_agreement"] == 1.0
    nll = document_nll(model, tokenizer, texts)
    expected = sum(n for n, _ in nll) / sum(t for _, t in nll)
    assert scores["teacher"]["cross_entropy"] == pytest.approx(expected, rel=1e-5)
    assert scores["self"]["cross_entropy"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("kwargs, name", [
    (dict(temperatures=(0.0,)), "temperatures"),
    (dict(temperatures=(2.0, -1.0)), r"temperatures\[1\]"),
    (dict(temperatures=(float("nan"),)), "temperatures"),
    (dict(temperatures=(2.0, 2.0)), "temperatures"),
    (dict(temperatures=(), hard_baseline=False), "temperatures"),
    (dict(steps=0), "steps"),
    (dict(steps=2.5), "steps"),
    (dict(student="no-such-preset"), "student"),
    (dict(alpha=1.5), "alpha"),
    (dict(n_train_docs=0), "n_train_docs"),
    (dict(n_train_docs=1, student="tinyworld-draft"), "n_train_docs"),  # fewer tokens than one 1024-token window
    (dict(n_eval_docs_per_family=0), "n_eval_docs_per_family"),
    (dict(seed=-1), "seed"),
])
def test_bad_arguments_name_the_argument(teacher, kwargs, name):
    model, tokenizer = teacher
    args = {**SMALL, **kwargs}
    with pytest.raises(ValueError, match=name):
        run_distillation(model, tokenizer, **args)


@pytest.mark.parametrize("argv, name", [
    (["--steps", "0"], "steps"),
    (["--temperatures", "1", "0"], r"temperatures\[1\]"),
    (["--student", "huge"], "student"),
])
def test_command_line_refuses_bad_arguments(tmp_path, argv, name):
    with pytest.raises(ValueError, match=name):
        main(["--teacher", "tinyworld-draft", "--out", str(tmp_path / "r.json"), *argv])


def test_command_line_writes_results(tmp_path):
    out = tmp_path / "results.json"
    main(["--teacher", "tinyworld-draft", "--out", str(out), "--student", "tiny-test", "--steps", "5",
          "--temperatures", "2", "--no-hard", "--n-train-docs", "100", "--device", "cpu", "--no-progress"])
    saved = json.loads(out.read_text())
    assert list(saved["runs"]) == ["T=2"] and saved["settings"]["teacher"] == "tinyworld-draft"
