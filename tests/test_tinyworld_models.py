"""The two shipped TinyWorld models: where they live, what reads them, and that they still know the world."""

import hashlib
import json
import re
import shutil
from dataclasses import asdict

import pytest
import torch

from llmbook.hub import ASSETS_DIR, SHIPPED_MODELS, ModelLoadError, load
from llmbook.model import count_parameters
from llmbook.train import get_preset
from llmbook.world import RetrievalConfig, default_splits, evaluation_suites, sample_documents
from llmbook.world.checkers import check_qa, check_react
from llmbook.world.evaluate import EvalSettings, check_targets, complete, react_questions, react_with_tools


@pytest.fixture(scope="module")
def models():
    return {name: load(name, device="cpu") for name in SHIPPED_MODELS}


def test_files_sizes_and_shapes(models):
    total = sum(f.stat().st_size for name in SHIPPED_MODELS for f in (ASSETS_DIR / name).iterdir())
    assert total <= 40 * 2**20, f"shipped assets weigh {total / 2**20:.1f} MB"
    main, draft = models["tinyworld-main"][0], models["tinyworld-draft"][0]
    assert 2e6 <= count_parameters(main) <= 2e7
    assert count_parameters(main) >= 5 * count_parameters(draft)
    tok_main, tok_draft = models["tinyworld-main"][1], models["tinyworld-draft"][1]
    assert (ASSETS_DIR / "tinyworld-main" / "tokenizer.json").read_bytes() == (ASSETS_DIR / "tinyworld-draft" / "tokenizer.json").read_bytes()
    assert tok_main.vocab_size == tok_draft.vocab_size == main.config.vocab_size == draft.config.vocab_size
    # The context holds the longest retrieval documents the world writes by default, with room to spare.
    longest = max(len(tok_main.encode(d.text, add_bos=True)) + 1
                  for d in sample_documents("retrieval", default_splits(0).train_kb, 0, 20, RetrievalConfig(n_records=(32,))))
    assert longest < main.config.max_position_embeddings == draft.config.max_position_embeddings


@pytest.mark.parametrize("name", SHIPPED_MODELS)
def test_shipped_run_matches_its_preset(name):
    training = json.loads((ASSETS_DIR / name / "training.json").read_text())
    preset = get_preset(name)
    assert training["preset"] == name and training["steps"] == preset.max_steps
    assert 0 < training["eval_floor"]["nats_per_token"] < 1
    evals = [e for _, _, e in training["history"] if e is not None]
    assert evals[-1] < evals[0] / 5


@pytest.mark.parametrize("name", SHIPPED_MODELS)
def test_transformers_reads_the_shipped_folders_with_the_same_logits(name, models):
    transformers = pytest.importorskip("transformers")
    ours, tok = models[name]
    theirs = transformers.AutoModelForCausalLM.from_pretrained(ASSETS_DIR / name, torch_dtype=torch.float32).eval()
    ids = torch.tensor([tok.encode("Question: Where does Mira live?\nAnswer: Mira lives in Tolby.", add_bos=True)])
    with torch.no_grad():
        diff = (ours(ids) - theirs(ids).logits).abs().max().item()
    assert diff < 1e-4


def test_main_model_keeps_its_measured_skills(models):
    """A regression guard on the shipped weights at their measured level, not the model card's targets.

    Measured when shipped (python -m llmbook.world.evaluate): 99.7% on training-fact questions and
    98% on multi-digit products with the calculator in the loop. A retrained or damaged model that
    falls clearly below that fails here.
    """
    model, tok = models["tinyworld-main"]
    splits = default_splits(0)
    items = evaluation_suites(splits, seed=0, n_per_suite=40)["qa_seen"]
    answers = complete(model, tok, [it.prompt for it in items], max_new_tokens=24, stop=["\n"])
    accuracy = sum(check_qa(it.prompt + a, splits.kb).correct for it, a in zip(items, answers)) / len(items)
    assert accuracy >= 0.9, accuracy  # chance is below 0.05 for most question kinds
    products = react_questions(splits, seed=0, n=20)["product"]
    traces = react_with_tools(model, tok, [q["question"] for q in products], splits.kb)
    assert sum(check_react(t, splits.kb).answer_correct for t in traces) >= 18


def test_evaluation_report_describes_the_shipped_weights():
    """The model card reads lib/llmbook/assets/results/evaluation.json instead of evaluating while
    the book builds; this fails when the report no longer describes the weights that ship."""
    report = json.loads((ASSETS_DIR / "results" / "evaluation.json").read_text())
    shipped = hashlib.sha256((ASSETS_DIR / "tinyworld-main" / "model.safetensors").read_bytes()).hexdigest()
    assert report["model"] == "tinyworld-main" and report["draft_model"] == "tinyworld-draft"
    assert report["weights_sha256"] == shipped, (
        "stale report: rerun python -m llmbook.world.evaluate --model tinyworld-main --draft tinyworld-draft "
        "--out lib/llmbook/assets/results/evaluation.json")
    assert report["settings"] == asdict(EvalSettings())  # the model card's suites, not a smaller run
    # Every rate behind a target is measured to within 3 points (one standard error), except
    # where the world itself has fewer items than a suite asks for and every one was asked.
    by_kind = report["qa"]["qa_seen"]["by_kind"]
    for name, target in report["targets"].items():
        kind = re.search(r", (\w+) questions", name)
        whole_population = kind is not None and by_kind[kind.group(1)]["n"] == by_kind[kind.group(1)]["population"]
        assert target.get("se", 0) <= 0.03 or whole_population, f"{name}: standard error {target['se']:.3f}"
    assert check_targets(report) == report["targets"]  # the verdicts follow from the values


def test_corrupt_or_missing_weights_name_the_file(tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(ASSETS_DIR / "tinyworld-draft", folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        load(folder)
    weights.unlink()
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        load(folder)
