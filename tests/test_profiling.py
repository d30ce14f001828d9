"""llmbook.profiling: the analytic FLOP and byte count against PyTorch's own counter and the model."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from llmbook.hub import load
from llmbook.model import CausalLM
from llmbook.profiling import component_times, forward_cost, machine_limits, quantize_int8

MATMULS = ("attention projections", "MLP", "output projection")


@pytest.fixture(scope="module")
def tiny():
    return load("tinyworld-main")


def counted(fn) -> dict[str, int]:
    """FLOPs of fn() as FlopCounterMode sees them, with attention computed by PyTorch's math kernel
    (the CPU flash kernel is not in the counter's registry and would count as zero)."""
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return {str(k).split(".")[-1]: v for k, v in counter.get_flop_counts()["Global"].items()}


@pytest.mark.parametrize("batch,new_tokens,logits", [(1, 10, "all"), (3, 7, "all"), (2, 12, "last")])
def test_prefill_flops_equal_pytorchs_count(tiny, batch, new_tokens, logits):
    model, _ = tiny
    ids = torch.randint(3, model.config.vocab_size, (batch, new_tokens), generator=torch.Generator().manual_seed(0))
    got = counted(lambda: model(ids, last_only=logits == "last"))
    cost = forward_cost(model.config, new_tokens=new_tokens, batch=batch, logits=logits)
    assert got["mm"] == sum(cost.flops[c] for c in MATMULS)
    assert got["bmm"] == cost.flops["attention scores"]


def test_decode_step_flops_with_a_kv_cache(tiny):
    model, _ = tiny
    cache = model.new_cache(2, 64)
    with torch.no_grad():
        model(torch.randint(3, 100, (2, 20)), cache=cache)
    got = counted(lambda: model(torch.randint(3, 100, (2, 1)), cache=cache))
    cost = forward_cost(model.config, new_tokens=1, past_tokens=20, batch=2)
    assert got["mm"] == sum(cost.flops[c] for c in MATMULS)
    assert got["bmm"] == cost.flops["attention scores"]


@pytest.mark.parametrize("tied", [True, False])
def test_weight_bytes_are_the_parameters_read_once(tied):
    config = dataclasses.replace(load("tinyworld-draft")[0].config, tie_word_embeddings=tied)
    model = CausalLM(config)
    cost = forward_cost(config, new_tokens=5, batch=2)
    read_whole = sum(v for k, v in cost.weight_bytes.items() if k != "embedding")
    embedding_matrix = config.vocab_size * config.hidden_size
    # Tied: the one matrix is read whole by the output projection; untied: the embedding's rows only.
    assert read_whole == 4 * (model.num_parameters() - (0 if tied else embedding_matrix))
    assert cost.weight_bytes["embedding"] == 4 * 2 * 5 * config.hidden_size
    half = forward_cost(config, new_tokens=5, batch=2, bytes_per_value=2)
    assert half.total_bytes < cost.total_bytes and half.total_flops == cost.total_flops


def test_decoding_is_memory_bound_and_prefill_is_not(tiny):
    config = tiny[0].config
    decode = forward_cost(config, new_tokens=1, past_tokens=200)
    prefill = forward_cost(config, new_tokens=200)
    assert decode.arithmetic_intensity < 1 < prefill.arithmetic_intensity / 50
    kv = forward_cost(config, new_tokens=1, past_tokens=99)
    per_position = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * 4
    assert (kv.kv_read_bytes, kv.kv_write_bytes) == (100 * per_position, per_position)


def test_bad_input(tiny):
    config = tiny[0].config
    for kwargs, needle in [(dict(new_tokens=0), "new_tokens"), (dict(new_tokens=1, batch=0), "batch"),
                           (dict(new_tokens=1, past_tokens=-1), "past_tokens"),
                           (dict(new_tokens=1, logits="first"), "logits"),
                           (dict(new_tokens=1, bytes_per_value=0), "bytes_per_value")]:
        with pytest.raises(ValueError, match=needle):
            forward_cost(config, **kwargs)
    with pytest.raises(ValueError, match="ModelConfig"):
        forward_cost({"hidden_size": 8}, new_tokens=1)


def test_machine_limits_are_positive_and_plausible():
    limits = machine_limits("cpu", copy_mib=32, matmul_n=256, repeats=2)
    assert 1e8 < limits.bandwidth_bytes_per_s < 1e13  # 0.1 GB/s to 10 TB/s
    assert 1e8 < limits.peak_flops_per_s < 1e16
    with pytest.raises(ValueError, match="matmul_n"):
        machine_limits("cpu", matmul_n=4)


def test_component_times_cover_the_forward_pass(tiny):
    model, _ = tiny
    ids = torch.randint(3, 100, (4, 64))
    with torch.no_grad():
        times = component_times(model, lambda: model(ids), repeats=2)
    parts = [k for k in times if k not in ("total",)]
    assert set(parts) == {"embedding", "attention projections", "attention scores and RoPE", "MLP", "norms",
                          "output projection", "other"}
    assert all(times[k] >= 0 for k in parts)
    assert abs(sum(times[k] for k in parts) - times["total"]) < 1e-9 + 0.05 * times["total"]
    assert times["MLP"] > 0 and times["attention projections"] > 0
    # The hooks are gone afterwards.
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_component_times_print_nothing_on_stderr(tiny, capfd):
    model, _ = tiny
    ids = torch.randint(3, 100, (1, 8))
    with torch.no_grad():
        component_times(model, lambda: model(ids), repeats=2)
    captured = capfd.readouterr()
    assert "profiler_start" not in captured.err and "USDT" not in captured.err
    import sys
    print("after", file=sys.stderr)  # stderr works again afterwards
    assert "after" in capfd.readouterr().err


def test_quantize_int8_is_a_working_copy(tiny, recwarn):
    model, _ = tiny
    q = quantize_int8(model)
    assert not [w for w in recwarn if "deprecated" in str(w.message)]
    assert isinstance(q, CausalLM) and q.device.type == "cpu" and q.dtype == torch.float32
    assert isinstance(model.lm_head, torch.nn.Linear) and model.lm_head.weight is model.model.embed_tokens.weight
    assert type(q.lm_head).__name__ == "Linear" and "quantized" in type(q.lm_head).__module__
    ids = torch.randint(3, 100, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, got = model(ids).softmax(-1), q(ids).softmax(-1)
        cache = q.new_cache(2, 16)
        q(ids[:, :11], cache=cache)
        step = q(ids[:, 11:], cache=cache)[:, -1].softmax(-1)
        whole = q(ids)[:, -1].softmax(-1)
    kl = (ref * (ref.log() - got.log())).sum(-1).mean()
    assert 0 < kl < 0.1  # close to float32, not equal
    # The KV cache works in the copy. Not bit-equal: dynamic quantization picks each call's
    # activation scale from that call's own values, so one token alone is rounded differently.
    assert (step * (step.log() - whole.log())).sum(-1).max() < 0.05
    times = component_times(q, lambda: q(ids), repeats=1)
    assert times["MLP"] > 0 and times["output projection"] > 0
    with pytest.raises(ValueError, match="float32"):
        quantize_int8(CausalLM(model.config, dtype=torch.bfloat16))


def test_interleaved_times_runs_every_function_once_per_round_in_varying_order():
    from llmbook.profiling import interleaved_times

    calls = []
    times = interleaved_times({k: (lambda k=k: calls.append(k)) for k in "abcd"}, rounds=6, seed=1)
    assert calls[:4] == list("abcd")  # the warm-up, in order
    rounds = [calls[4 + 4 * r: 8 + 4 * r] for r in range(6)]
    assert all(sorted(r) == list("abcd") for r in rounds) and len({tuple(r) for r in rounds}) > 1
    assert {k: len(v) for k, v in times.items()} == dict.fromkeys("abcd", 6)
    assert all(t >= 0 for v in times.values() for t in v)
    with pytest.raises(ValueError, match="rounds"):
        interleaved_times({"a": lambda: None}, rounds=0)
    with pytest.raises(ValueError, match="fns"):
        interleaved_times({})
