import json

from llmbook.tokenizer import Tokenizer
from llmbook.train import main as train_main
from llmbook.world.corpus import main as corpus_main


def test_corpus_folder_feeds_the_training_command(tmp_path):
    summary = corpus_main(["--out", str(tmp_path / "corpus"), "--n-docs", "600", "--n-eval", "60"])
    corpus = tmp_path / "corpus"
    lines = (corpus / "train.jsonl").read_text().splitlines()
    assert len(lines) == 600 and {"text", "family", "logprob"} <= set(json.loads(lines[0]))
    assert set(summary["eval_entropy_nats_per_token"]) == {"story", "fact", "qa", "card", "react", "arithmetic", "retrieval"}
    assert all(0 < v < 5 for v in summary["eval_entropy_nats_per_token"].values())
    tokenizer = Tokenizer.from_file(corpus)
    assert tokenizer.vocab_size == summary["vocab_size"] and tokenizer.bos_token_id == 0

    result = train_main([
        "--preset", "tiny-test", "--data", str(corpus / "train.jsonl"), "--eval-data", str(corpus / "eval.jsonl"),
        "--tokenizer", str(corpus / "tokenizer.json"), "--out", str(tmp_path / "run"), "--max-steps", "30", "--no-progress",
    ])
    losses = [h["eval_loss"] for h in result.history if h.get("eval_loss") is not None]
    assert losses[-1] < losses[0] - 1.0, "the real corpus is learnable by the training command"
