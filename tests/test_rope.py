"""llmbook.rope: RoPE's spectrum, rotation, relative-position property and decay bound, against
transformers' Llama implementation and the model's own attention tables."""

from __future__ import annotations

import math

import pytest
import torch

from llmbook import rope
from llmbook.model import ModelConfig, RotaryEmbedding, apply_rotary, rope_inverse_frequencies


def _llama(head_dim: int, base: float):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = LlamaConfig(hidden_size=2 * head_dim, num_attention_heads=2, head_dim=head_dim,
                         rope_theta=base, max_position_embeddings=4096)
    return LlamaRotaryEmbedding(config)


@pytest.mark.parametrize("head_dim, base", [(64, 10000.0), (32, 500000.0), (8, 100.0)])
def test_frequencies_match_transformers_and_the_model(head_dim, base):
    theta = rope.frequencies(head_dim, base)
    assert theta.shape == (head_dim // 2,) and theta.dtype == torch.float32
    assert torch.equal(theta, _llama(head_dim, base).inv_freq.float())
    config = ModelConfig(vocab_size=16, hidden_size=2 * head_dim, intermediate_size=8, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, head_dim=head_dim, rope_theta=base)
    assert torch.equal(theta, rope_inverse_frequencies(config))
    # The spectrum: pair 0 turns by one radian per position, each next pair slower by base^(2/d).
    assert theta[0] == 1.0 and torch.all(theta[1:] < theta[:-1])
    assert math.isclose(float(theta[1] / theta[0]), base ** (-2 / head_dim), rel_tol=1e-6)


def test_rotate_matches_transformers_apply_rotary_pos_emb():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 3, 7, 64, generator=g)
    k = torch.randn(1, 3, 7, 64, generator=g)
    positions = torch.tensor([0, 1, 2, 5, 100, 1000, 4000])
    cos, sin = _llama(64, 10000.0)(q, positions[None])
    q_hf, k_hf = apply_rotary_pos_emb(q, k, cos, sin)
    torch.testing.assert_close(rope.rotate(q, positions), q_hf, rtol=0, atol=1e-5)
    torch.testing.assert_close(rope.rotate(k, positions), k_hf, rtol=0, atol=1e-5)
    # ... and the model's own table for the same positions (what attention applies).
    config = ModelConfig(vocab_size=16, hidden_size=128, intermediate_size=8, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, head_dim=64, max_position_embeddings=4096)
    cos_m, sin_m = RotaryEmbedding(config)(positions[None], 0, 7, torch.float32)
    torch.testing.assert_close(rope.rotate(q, positions), apply_rotary(q, cos_m, sin_m), rtol=0, atol=1e-5)
    # A rotation keeps lengths.
    torch.testing.assert_close(rope.rotate(q, positions).norm(dim=-1), q.norm(dim=-1), rtol=1e-5, atol=1e-5)


def test_the_logit_depends_on_the_relative_position_only():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(5, 64, generator=g), torch.randn(5, 64, generator=g)
    base_logit = rope.attention_logit(q, k, 3, 10)
    for shift in (1, 50, 2000):
        torch.testing.assert_close(rope.attention_logit(q, k, 3 + shift, 10 + shift), base_logit, rtol=1e-4, atol=1e-4)
    # A different distance gives a different logit (the check is not vacuous).
    assert (rope.attention_logit(q, k, 3, 11) - base_logit).abs().max() > 1e-2
    # At distance 0 the rotation cancels: the plain dot product.
    torch.testing.assert_close(rope.attention_logit(q, k, 7, 7), (q * k).sum(-1), rtol=1e-5, atol=1e-5)


def test_decay_bound_exact_values_and_decay():
    # r = 0: every S_j = j, so the mean of |S_j| over j = 1..d/2 is (d/2 + 1) / 2.
    for d in (2, 8, 64):
        assert math.isclose(float(rope.decay_bound([0.0], d)[0]), (d / 2 + 1) / 2, rel_tol=1e-12)
    # d = 2: one pair, |S_1| = |e^{i r}| = 1 at every distance.
    torch.testing.assert_close(rope.decay_bound([0, 1, 7, 1000], 2), torch.ones(4, dtype=torch.float64))
    # d = 4, base b: theta = (1, b^(-1/2)), so S_2 = e^{i r} + e^{i r / sqrt(b)}; one value by hand.
    r, b = 3.0, 100.0
    slow = r / math.sqrt(b)
    expected = (1 + abs(complex(math.cos(r), math.sin(r)) + complex(math.cos(slow), math.sin(slow)))) / 2
    # (the frequencies are the model's float32 ones, so theta_1 = 0.1 to float32's precision)
    assert math.isclose(float(rope.decay_bound([r], 4, b)[0]), expected, rel_tol=1e-7)
    # The long-term decay: far tokens get a much smaller bound than near ones (d = 128, base 10,000).
    curve = rope.decay_bound(torch.arange(0, 5000), 128)
    assert curve.shape == (5000,) and curve[0] == 32.5
    assert curve[1000:].mean() < 0.25 * curve[0] and curve[:10].mean() > 0.7 * curve[0]


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="head_dim must be an even integer >= 2"):
        rope.frequencies(63)
    with pytest.raises(ValueError, match="base must be a finite number > 1"):
        rope.frequencies(64, base=1.0)
    with pytest.raises(ValueError, match="head_dim must be an even integer"):
        rope.rotate(torch.zeros(2, 5), [0, 1])
    with pytest.raises(ValueError, match="positions must give one position per row of x"):
        rope.rotate(torch.zeros(3, 4), [0, 1])
    with pytest.raises(ValueError, match="positions must be finite"):
        rope.rotate(torch.zeros(1, 4), [float("nan")])
    with pytest.raises(ValueError, match="q and k must be tensors of the same shape"):
        rope.attention_logit(torch.zeros(4), torch.zeros(6), 0, 1)
    with pytest.raises(ValueError, match="distances must be finite"):
        rope.decay_bound([float("inf")], 8)


# ---------------------------------------------------------------------------- past the trained context
def _tiny_model(max_positions: int = 16):
    from llmbook.model import CausalLM

    torch.manual_seed(0)
    config = ModelConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                         max_position_embeddings=max_positions)
    return CausalLM(config).eval()


def test_positions_past_the_context_need_the_opt_in():
    model = _tiny_model(16)
    ids = torch.randint(0, 32, (2, 21), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="exceeds max_position_embeddings=16; pass allow_extrapolation=True"):
        model(ids)
    with pytest.raises(ValueError, match=r"max_length must be in \[1, 16\].*allow_extrapolation=True"):
        model.new_cache(2, 21)
    with pytest.raises(ValueError, match="allow_extrapolation must be True or False"):
        model(ids[:, :4], allow_extrapolation="yes")
    with pytest.raises(ValueError, match="allow_extrapolation must be True or False"):
        model.new_cache(2, 8, allow_extrapolation=1)  # the cache carries it, so it checks it too
    with torch.no_grad():
        long = model(ids, allow_extrapolation=True)
        short = model(ids[:, :16])
        # Causal attention: the first 16 positions are computed exactly as without the opt-in.
        torch.testing.assert_close(long[:, :16], short, rtol=0, atol=1e-5)
        # Incremental decoding past the context, through the KV cache, matches the full pass.
        # The opt-in is given once, when the cache is made; the passes into it inherit it.
        cache = model.new_cache(2, 21, allow_extrapolation=True)
        steps = [model(ids[:, :10], cache=cache)]
        for i in range(10, 21):
            steps.append(model(ids[:, i:i + 1], cache=cache))
        torch.testing.assert_close(torch.cat(steps, dim=1), long, rtol=1e-4, atol=1e-4)
