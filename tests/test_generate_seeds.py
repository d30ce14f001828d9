"""generate_ids' reproducibility promises: a row's tokens depend only on its prompt and its seed.

Each case runs a batch, then every prompt alone with ``seed=[its row seed]``, and compares.
The model is a tiny random llmbook CausalLM (tests/model_helpers.py), so this takes seconds.
"""

from __future__ import annotations

import pytest
import torch

from llmbook.generate import generate, generate_ids
from llmbook.sampling import row_seeds
from model_helpers import make_pair

STEPS = 20
SAMPLING = {
    "T=1": dict(temperature=1.0),
    "top_p": dict(temperature=1.0, top_p=0.8),
    "top_k": dict(temperature=0.9, top_k=12),
    "min_p": dict(temperature=1.2, min_p=0.05),
}


@pytest.fixture(scope="module")
def pair():
    return make_pair(seed=3)


@pytest.fixture(scope="module")
def prompts(pair) -> dict[str, list[list[int]]]:
    _, tok = pair
    short, medium, long = (tok.encode(t) for t in ["The cat", "Héllo wörld", "Numbers 0123456789, punctuation and more"])
    assert len(short) < len(medium) < len(long)  # batched together they are left-padded
    return {
        "one prompt": [short],
        "same prompt twice": [short, short],
        "five of three lengths": [short, long, medium, short, long],
    }


@pytest.mark.parametrize("setting", SAMPLING)
@pytest.mark.parametrize("batch", ["one prompt", "same prompt twice", "five of three lengths"])
def test_each_row_generates_what_its_prompt_generates_alone(pair, prompts, batch, setting):
    model, _ = pair
    rows = prompts[batch]
    together = generate_ids(model, rows, max_new_tokens=STEPS, seed=123, **SAMPLING[setting])
    for i, (prompt, seed) in enumerate(zip(rows, row_seeds(123, len(rows)))):
        alone = generate_ids(model, [prompt], max_new_tokens=STEPS, seed=[seed], **SAMPLING[setting])
        assert together.tokens[i] == alone.tokens[0], f"row {i}"
    # Row 0 of any batch is the prompt alone with the same int seed.
    assert together.tokens[0] == generate_ids(model, rows[:1], max_new_tokens=STEPS, seed=123, **SAMPLING[setting]).tokens[0]


@pytest.mark.parametrize("setting", SAMPLING)
def test_copies_of_one_prompt_with_an_int_seed_are_different_samples(pair, prompts, setting):
    model, _ = pair
    copies = prompts["one prompt"] * 8
    result = generate_ids(model, copies, max_new_tokens=STEPS, seed=0, **SAMPLING[setting])
    assert len({tuple(t) for t in result.tokens}) >= 6


def test_same_seed_same_output_and_equivalent_forms(pair, prompts):
    model, _ = pair
    rows = prompts["five of three lengths"]
    kwargs = dict(max_new_tokens=STEPS, temperature=1.0, top_p=0.95)
    a = generate_ids(model, rows, seed=7, **kwargs)
    assert a.tokens == generate_ids(model, rows, seed=7, **kwargs).tokens
    assert a.tokens != generate_ids(model, rows, seed=8, **kwargs).tokens
    # An int seed is shorthand for its row seeds, and a seed list for one generator per row.
    seeds = row_seeds(7, len(rows))
    assert generate_ids(model, rows, seed=seeds, **kwargs).tokens == a.tokens
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    assert generate_ids(model, rows, generator=generators, **kwargs).tokens == a.tokens
    # One shared generator reproduces the whole batch from its state.
    one = [generate_ids(model, rows, generator=torch.Generator().manual_seed(5), **kwargs).tokens for _ in range(2)]
    assert one[0] == one[1]
    # generate() passes a seed list through.
    _, tok = pair
    text = generate(model, tok, ["The cat", "The cat"], seed=[seeds[1], 7], max_new_tokens=10, stop_at_eos=False)
    assert text.tokens[1] == generate(model, tok, "The cat", seed=7, max_new_tokens=10, stop_at_eos=False).tokens[0]


def test_greedy_ignores_the_seed(pair, prompts):
    model, _ = pair
    rows = prompts["five of three lengths"]
    outputs = [generate_ids(model, rows, max_new_tokens=STEPS, temperature=0, seed=s).tokens for s in (0, 1, None, [9] * 5)]
    assert all(o == outputs[0] for o in outputs)
    assert outputs[0][1] == generate_ids(model, rows[1:2], max_new_tokens=STEPS, temperature=0).tokens[0]


@pytest.mark.parametrize("kwargs, match", [
    (dict(seed=[1]), r"seed must be an int or a list of one int per prompt \(2\)"),
    (dict(seed=-1), r"seed must be an integer in \[0, 2\*\*64 - 1\]"),
    (dict(seed=[1, -2]), r"seed must be an integer in \[0, 2\*\*64 - 1\]"),
    (dict(seed=1.5), "seed must be an integer"),
    (dict(generator=[torch.Generator()]), r"generator must be a torch.Generator, a list of one per prompt \(2\)"),
    (dict(generator="g"), "generator must be"),
])
def test_bad_seed_or_generator(pair, kwargs, match):
    model, _ = pair
    with pytest.raises(ValueError, match=match):
        generate_ids(model, [[5, 6], [7]], max_new_tokens=2, **kwargs)
