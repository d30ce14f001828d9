"""Speculative decoding: llmbook.speculative vs transformers' assisted generation, side by side.

Greedy decoding (both sides produce the target's greedy text, checked), the same prompts, the
same number of draft tokens per round (transformers: ``num_assistant_tokens`` with the
"constant" schedule), the same thread count, one process. Pairs:

- TinyWorld: tinyworld-main verified, tinyworld-draft drafting (``assistant_model``);
- SmolLM2-135M-Instruct: prompt lookup drafting (``prompt_lookup_num_tokens``), and llmbook's
  early-exit draft (the first layers of the same model), which transformers runs as
  ``assistant_early_exit``.

Plain greedy decoding of each target is timed too, so every speculative time is also a speed-up
over not speculating. Target: llmbook speculative tokens/s >= 1.0x transformers' on the same
pair and gamma. Not a test: prints a table and writes lib/llmbook/assets/results/speculative.json.

    PYTHONPATH=lib python benchmarks/bench_speculative.py
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import torch
import transformers

from llmbook import hub
from llmbook.generate import generate_ids
from llmbook.hub import ASSETS_DIR, load
from llmbook.speculative import PromptLookupDraft, early_exit_draft, speculative_generate

GAMMA, NEW_TOKENS, REPEATS = 4, 48, 3
TINY_PROMPTS = ["Once upon a time, in the town of ", "Question: Where does Mira live?\nAnswer:",
                '{"name": "', "Question: How old are Mira and Tobin together?\nThought:"]
REAL_PROMPTS = [  # chat answers that repeat the question's words (where prompt lookup can help)
    "Rewrite this sentence in the past tense: The cat sits on the mat and looks at the bird in the tree.",
    "List the words of this sentence in reverse order: the quick brown fox jumps over the lazy dog.",
]


def timed(fn) -> tuple[float, object]:
    times, out = [], None
    for _ in range(REPEATS):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def run_pair(name, target, tok, hf_target, prompts, drafts, hf_kwargs) -> list[dict]:
    rows = []
    eos = tok.eos_token_id
    for draft_name, draft in drafts.items():
        ours_s = theirs_s = plain_s = 0.0
        tokens = 0
        rates = []
        for prompt in prompts:
            ids = tok.encode(prompt, add_bos=tok.adds_bos_by_default)
            t_plain, plain = timed(lambda: generate_ids(target, [ids], max_new_tokens=NEW_TOKENS, temperature=0,
                                                        eos_token_ids=eos))
            t_ours, ours = timed(lambda: speculative_generate(target, draft, ids, gamma=GAMMA,
                                                              max_new_tokens=NEW_TOKENS, temperature=0,
                                                              eos_token_ids=eos))
            with torch.no_grad():
                t_theirs, theirs = timed(lambda: hf_target.generate(
                    torch.tensor([ids]), do_sample=False, max_new_tokens=NEW_TOKENS, eos_token_id=eos,
                    pad_token_id=eos, **hf_kwargs[draft_name]))
            theirs = theirs[0, len(ids):].tolist()
            if not (ours.tokens == plain.tokens[0] == theirs):
                raise RuntimeError(f"{name}/{draft_name}: outputs differ for {prompt!r}")
            ours_s, theirs_s, plain_s = ours_s + t_ours, theirs_s + t_theirs, plain_s + t_plain
            tokens += len(ours.tokens)
            rates.append((sum(ours.accepted), sum(ours.proposed), len(ours.tokens), len(ours.accepted)))
        accepted, proposed, emitted, rounds = (sum(r[i] for r in rates) for i in range(4))
        rows.append(dict(pair=name, draft=draft_name, gamma=GAMMA, tokens=tokens,
                         llmbook_tok_s=round(tokens / ours_s, 1), transformers_tok_s=round(tokens / theirs_s, 1),
                         plain_llmbook_tok_s=round(tokens / plain_s, 1),
                         ratio_vs_transformers=round(theirs_s / ours_s, 3),
                         speedup_vs_plain=round(plain_s / ours_s, 3),
                         acceptance_rate=round(accepted / proposed, 3) if proposed else None,
                         tokens_per_round=round(emitted / rounds, 3)))
    return rows


def main() -> None:
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    results = []
    target, tok = load("tinyworld-main")
    draft, _ = load("tinyworld-draft")
    hf = lambda path: transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()  # noqa: E731
    hf_target, hf_draft = hf(ASSETS_DIR / "tinyworld-main"), hf(ASSETS_DIR / "tinyworld-draft")
    results += run_pair("TinyWorld", target, tok, hf_target, TINY_PROMPTS, {"tinyworld-draft": draft},
                        {"tinyworld-draft": dict(assistant_model=hf_draft, num_assistant_tokens=GAMMA,
                                                 num_assistant_tokens_schedule="constant")})
    real, real_tok = load("smollm2-135m-instruct")
    hf_real = hf(hub.real_model_dir())
    layers = real.config.num_hidden_layers // 4
    prompts = [real_tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True)
               for p in REAL_PROMPTS]
    results += run_pair("SmolLM2-135M", real, real_tok, hf_real, prompts,
                        {"prompt lookup": PromptLookupDraft(max_ngram=2, latest=False),  # as transformers
                         f"early exit ({layers} layers)": early_exit_draft(real, layers)},
                        {"prompt lookup": dict(prompt_lookup_num_tokens=GAMMA),
                         f"early exit ({layers} layers)": dict(assistant_early_exit=layers,
                                                               num_assistant_tokens=GAMMA,
                                                               num_assistant_tokens_schedule="constant")})
    print(f"greedy, gamma = {GAMMA}, {NEW_TOKENS} new tokens per prompt, median of {REPEATS}, "
          f"{threads} threads, torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"{'pair':>13} {'draft':>22} {'llmbook tok/s':>14} {'transformers':>13} {'ratio':>6} "
          f"{'plain':>7} {'speed-up':>9} {'alpha':>6} {'tok/round':>9}")
    for r in results:
        print(f"{r['pair']:>13} {r['draft']:>22} {r['llmbook_tok_s']:>14} {r['transformers_tok_s']:>13} "
              f"{r['ratio_vs_transformers']:>6} {r['plain_llmbook_tok_s']:>7} {r['speedup_vs_plain']:>9} "
              f"{r['acceptance_rate']!s:>6} {r['tokens_per_round']:>9}")
    out = dict(benchmark="speculative decoding: llmbook.speculative vs transformers assisted generation",
               target="llmbook tokens/s >= 1.0x transformers on the same pair and gamma",
               machine=f"{platform.processor() or platform.machine()}, {threads} torch threads, torch "
                       f"{torch.__version__}, transformers {transformers.__version__}",
               settings=dict(gamma=GAMMA, new_tokens=NEW_TOKENS, repeats=REPEATS, greedy=True),
               results=results)
    path = ASSETS_DIR / "results" / "speculative.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
