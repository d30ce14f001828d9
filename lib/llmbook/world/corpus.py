"""Write the TinyWorld pretraining corpus and its tokenizer to a folder, for ``python -m llmbook.train``.

    python -m llmbook.world.corpus --out runs/corpus [--seed 0] [--n-docs 100000] [--n-eval 2000]

writes ``train.jsonl`` and ``eval.jsonl`` (one ``{"text", "family", "logprob"}`` per line;
the evaluation documents come from the same training view of the world under another
seed, so their loss measures fit, not knowledge of held-out entities), ``tokenizer.json``
with ``tokenizer_config.json`` (BPE trained on the training texts only), and
``corpus.json`` with each family's exact entropy, the floor a perfect model would reach.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from llmbook.world.bpe import train_tokenizer
from llmbook.world.splits import Corpus, build_corpus

EVAL_SEED_OFFSET = 1_000_003  # a different, fixed stream for evaluation documents


def _write_jsonl(path: Path, corpus: Corpus) -> None:
    with path.open("w", encoding="utf-8") as f:
        for doc in corpus.documents:
            f.write(json.dumps({"text": doc.text, "family": doc.family, "logprob": doc.logprob}) + "\n")


def write_corpus(out: str | Path, seed: int = 0, n_docs: int = 100_000, n_eval: int = 2_000) -> dict:
    """Write corpus files and tokenizer into ``out``; return the summary also saved as corpus.json."""
    if isinstance(n_eval, bool) or not isinstance(n_eval, int) or n_eval < 1:
        raise ValueError(f"n_eval must be an int >= 1, got {n_eval!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train = build_corpus(seed, n_docs)
    evaluation = build_corpus(seed + EVAL_SEED_OFFSET, n_eval)
    tokenizer = train_tokenizer(doc.text for doc in train.documents)
    tokenizer.save(out)
    _write_jsonl(out / "train.jsonl", train)
    _write_jsonl(out / "eval.jsonl", evaluation)

    def entropy_per_token(corpus: Corpus) -> dict[str, float]:
        # Exact nats of each document under the generator, spread over its tokens (plus EOS, which the model also predicts).
        result = {}
        for family in sorted({d.family for d in corpus.documents}):
            docs = [d for d in corpus.documents if d.family == family]
            tokens = sum(len(tokenizer.encode(d.text)) + 1 for d in docs)
            result[family] = -sum(d.logprob for d in docs) / tokens
        return result

    summary = {
        "seed": seed,
        "n_train_docs": len(train.documents),
        "n_eval_docs": len(evaluation.documents),
        "vocab_size": tokenizer.vocab_size,
        "eval_entropy_nats_per_token": entropy_per_token(evaluation),
    }
    (out / "corpus.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m llmbook.world.corpus", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder to write into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-docs", type=int, default=100_000, help="training documents (default 100000)")
    parser.add_argument("--n-eval", type=int, default=2_000, help="evaluation documents (default 2000)")
    args = parser.parse_args(argv)
    summary = write_corpus(args.out, args.seed, args.n_docs, args.n_eval)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
