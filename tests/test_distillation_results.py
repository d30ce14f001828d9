"""The committed distillation results still describe the shipped teacher.

Chapter 3 reads ``llmbook/assets/results/distillation-{300,600}.json`` (two training budgets)
instead of training eight students while the book builds. These checks fail when the file goes stale: a retrained teacher, a
changed held-out set or tokenizer would change the teacher's own held-out score, which is
recomputed here from the shipped weights.
"""

from __future__ import annotations

import json
import math

import pytest

from llmbook import hub
from llmbook.distill import compare_with_teacher
from llmbook.world import FAMILIES, default_splits
from llmbook.world.evaluate import heldout_documents

BUDGETS = (300, 600)  # optimizer steps; the file name says which


@pytest.fixture(scope="module", params=BUDGETS, ids=lambda steps: f"{steps}-steps")
def results(request) -> dict:
    data = json.loads((hub.ASSETS_DIR / "results" / f"distillation-{request.param}.json").read_text())
    assert data["settings"]["steps"] == request.param, "the file name and the run's steps disagree"
    return data


def test_every_run_the_chapter_reads_is_there(results):
    settings = results["settings"]
    assert settings["alpha"] == 1.0 and settings["hard_baseline"] is True
    assert list(results["runs"]) == ["hard"] + [f"T={t:g}" for t in settings["temperatures"]]
    assert settings["temperatures"] == [1.0, 2.0, 4.0]
    for label, run in results["runs"].items():
        assert run["eval_history"], label
        assert run["eval_history"][-1][0] == settings["steps"], f"{label} did not finish its {settings['steps']} steps"
        for key in ("cross_entropy", "kl_from_teacher", "top1_agreement"):
            assert math.isfinite(run[key]), (label, key)
        assert 0.0 <= run["top1_agreement"] <= 1.0 and run["kl_from_teacher"] >= 0.0


def test_results_match_the_shipped_teacher(results):
    teacher, tokenizer = hub.load("tinyworld-main", device="cpu")
    settings = results["settings"]
    assert settings["teacher_parameters"] == teacher.num_parameters()
    per_family, rest = divmod(settings["n_eval_docs"], len(FAMILIES))
    assert rest == 0, "the held-out set holds the same number of documents of every family"
    heldout = heldout_documents(default_splits(0), settings["seed"], per_family)
    scores = compare_with_teacher(teacher, {}, tokenizer, [d.text for d in heldout])
    recorded = results["reference"]["teacher"]
    assert scores["teacher"]["n_tokens"] == recorded["n_tokens"]
    assert scores["teacher"]["cross_entropy"] == pytest.approx(recorded["cross_entropy"], abs=1e-4)
