"""llmbook.memory: the training state's terms, against built models and the published numbers."""

from __future__ import annotations

import json

import pytest
import torch

from llmbook.hub import ASSETS_DIR
from llmbook.memory import (
    LORA_TARGETS, NF4_BITS_PER_WEIGHT, activation_memory, lora_parameter_count, parameter_counts,
    saved_per_token, training_state,
)
from llmbook.model import CausalLM, ModelConfig

#: Qwen2-1.5B's config.json (Hugging Face Qwen/Qwen2-1.5B), written out: the book's "2B" case.
QWEN2_1_5B = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 151936, "hidden_size": 1536,
    "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
    "max_position_embeddings": 131072, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
    "hidden_act": "silu", "use_sliding_window": False, "sliding_window": 131072, "max_window_layers": 28,
    "bos_token_id": 151643, "eos_token_id": 151643,
}


def _configs():
    tiny = json.loads((ASSETS_DIR / "tinyworld-main" / "config.json").read_text())
    untied_biased = ModelConfig(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                                num_attention_heads=6, num_key_value_heads=2, attention_bias=True,
                                attention_output_bias=True, tie_word_embeddings=False)
    return {"tinyworld": ModelConfig.from_hf(tiny), "qwen2-1.5b": ModelConfig.from_hf(QWEN2_1_5B),
            "untied, biased": untied_biased}


@pytest.mark.parametrize("name", ["tinyworld", "qwen2-1.5b", "untied, biased"])
def test_parameter_counts_equal_the_built_model(name):
    config = _configs()[name]
    model = CausalLM(config, device="meta")  # shapes only, no memory
    assert sum(parameter_counts(config).values()) == sum(p.numel() for p in model.parameters())


def test_qwen2_1_5b_has_its_published_size_and_mixed_precision_adamw_is_16_bytes_per_parameter():
    state = training_state(QWEN2_1_5B, param_dtype="bfloat16", master_weights=True)
    assert state.parameters == 1_543_714_304  # Qwen2-1.5B's model card: 1.54B
    assert state.total == 16 * state.parameters
    terms = {t.name: t.bytes for t in state.terms}
    assert terms == {"weights": 2 * state.parameters, "gradients": 2 * state.parameters,
                     "master weights": 4 * state.parameters, "optimizer states": 8 * state.parameters}
    assert state.total / 1e9 > 24  # more than a 24 GB card holds before any activation


def test_cheaper_states():
    config = _configs()["qwen2-1.5b"]
    n = training_state(config).parameters
    eight_bit = {t.name: t.bytes for t in training_state(config, optimizer="adamw8bit").terms}
    assert eight_bit["optimizer states"] == 2 * (n + 4 * -(-n // 2048))
    assert {t.name: t.bytes for t in training_state(config, optimizer="sgd").terms}["optimizer states"] == 0
    lora = training_state(config, method="lora", param_dtype="bfloat16", lora_rank=8)
    adapters = lora_parameter_count(config, 8)
    assert lora.trainable == adapters == 28 * 8 * ((1536 + 1536) + (1536 + 256))  # q_proj, v_proj
    # The frozen base in bfloat16; the adapters, their gradients and moments in float32 (PEFT's default).
    assert lora.total == 2 * n + 4 * adapters + 4 * adapters + 8 * adapters
    qlora = training_state(config, method="qlora", param_dtype="bfloat16", lora_rank=8)
    weights = {t.name: t.bytes for t in qlora.terms}["weights"]
    # NF4 for the decoder layers' linear weights only; the (tied) embedding and the norms in bfloat16.
    parts = parameter_counts(config)
    linear = parts["attention"] + parts["mlp"] - 28 * (1536 + 256 + 256)  # without q/k/v biases
    assert weights == round(linear * NF4_BITS_PER_WEIGHT / 8) + 2 * (n - linear) + 4 * adapters
    assert abs(NF4_BITS_PER_WEIGHT - 4.127) < 0.001  # QLoRA's 0.127 bits of constants per weight


def test_lora_counts_every_target_shape():
    config = _configs()["tinyworld"]  # hidden 256, 8 heads x 32, 2 kv heads, mlp 688, 6 layers
    shapes = {"q_proj": 256 + 256, "k_proj": 256 + 64, "v_proj": 256 + 64, "o_proj": 256 + 256,
              "gate_proj": 256 + 688, "up_proj": 256 + 688, "down_proj": 688 + 256}
    assert lora_parameter_count(config, 4, list(LORA_TARGETS)) == 6 * 4 * sum(shapes.values())


def test_bad_input_is_refused():
    config = _configs()["tinyworld"]
    with pytest.raises(ValueError, match="unknown LoRA target"):
        lora_parameter_count(config, 4, ["qkv_proj"])
    with pytest.raises(ValueError, match=r"rank must be an integer in \[1, 64\]"):
        lora_parameter_count(config, 65, ["k_proj"])  # k_proj is 256 x 64
    with pytest.raises(ValueError, match="rank"):
        lora_parameter_count(config, 0)
    with pytest.raises(ValueError, match="repeat"):
        lora_parameter_count(config, 2, ["q_proj", "q_proj"])
    with pytest.raises(ValueError, match="method"):
        training_state(config, method="prefix")
    with pytest.raises(ValueError, match="param_dtype"):
        training_state(config, param_dtype="int8")
    with pytest.raises(ValueError, match="optimizer"):
        training_state(config, optimizer="lion")
    with pytest.raises(ValueError, match="master_weights"):
        training_state(config, master_weights=True)  # float32 parameters
    with pytest.raises(ValueError, match="needs lora_rank"):
        training_state(config, method="lora")
    with pytest.raises(ValueError, match="only for method"):
        training_state(config, lora_rank=4)
    with pytest.raises(ValueError, match="not supported"):  # a config it cannot account for
        training_state({**QWEN2_1_5B, "architectures": ["GemmaForCausalLM"], "model_type": "gemma"})
    with pytest.raises(ValueError, match="config must be"):
        training_state("qwen2")


def _whole_model_saved(model, b, t):
    import torch.nn.functional as F

    from llmbook.memory import _saved_bytes

    ids = torch.randint(3, model.config.vocab_size, (b, t + 1), generator=torch.Generator().manual_seed(0))
    exclude = {p.untyped_storage().data_ptr() for p in model.parameters()}
    loss = lambda: F.cross_entropy(model(ids[:, :-1]).float().flatten(0, 1), ids[:, 1:].flatten())  # noqa: E731
    return _saved_bytes(loss, exclude)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_activation_memory_equals_what_the_whole_model_saves(dtype):
    """One layer's count, times the layers, plus the head's, is what training TinyWorld-main saves
    (counted the same way on the whole model), at several batch shapes."""
    from llmbook.hub import load

    model, _ = load("tinyworld-main")
    model = model.to({"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]).train()
    saved = saved_per_token(model.config, dtype)
    assert saved.layer > 0 and saved.head > 0
    for b, t in [(1, 48), (3, 100)]:
        terms = activation_memory(model.config, batch_size=b, seq_len=t, dtype=dtype, saved=saved)
        predicted = sum(term.bytes for term in terms)
        assert abs(predicted / _whole_model_saved(model, b, t) - 1) < 0.01


def test_saved_per_token_is_linear_and_refuses_bad_input():
    config = _configs()["untied, biased"]
    a, b = saved_per_token(config, tokens=(8, 16)), saved_per_token(config, tokens=(16, 40))
    assert a == b  # the same slope and constant from other token counts: linear in the tokens
    with pytest.raises(ValueError, match="tokens"):
        saved_per_token(config, tokens=(16, 16))
    with pytest.raises(ValueError, match="dtype"):
        saved_per_token(config, dtype="int8")
    with pytest.raises(ValueError, match="batch_size"):
        activation_memory(config, batch_size=0, seq_len=8, saved=a)
    with pytest.raises(ValueError, match="context"):
        activation_memory(config, batch_size=1, seq_len=config.max_position_embeddings + 1, saved=a)
    with pytest.raises(ValueError, match="SavedPerToken measured in 'bfloat16'"):
        activation_memory(config, batch_size=1, seq_len=8, dtype="bfloat16", saved=a)


# -- the whole step: estimate, measurement, gradient checkpointing ------------------------------


def test_gradient_checkpointing_gives_the_same_gradients_and_saves_less():
    from llmbook.hub import load
    from llmbook.memory import _saved_bytes

    model, _ = load("tinyworld-main")
    model.train()
    ids = torch.randint(3, model.config.vocab_size, (2, 65), generator=torch.Generator().manual_seed(0))
    grads, saved = [], []
    for checkpointing in (False, True):
        model.gradient_checkpointing = checkpointing
        model.zero_grad(set_to_none=True)
        exclude = {p.untyped_storage().data_ptr() for p in model.parameters()}
        holder = []
        saved.append(_saved_bytes(lambda: holder.append(
            torch.nn.functional.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())), exclude))
        holder[0].backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-6, msg=name)
    assert saved[1] < 0.5 * saved[0]
    model.eval()
    with torch.no_grad():  # never in inference: no graph to save
        model.gradient_checkpointing = True
        assert torch.equal(model(ids[:, :8]), (setattr(model, "gradient_checkpointing", False), model(ids[:, :8]))[1])


def test_estimate_is_the_state_plus_the_phase_that_peaks():
    config = _configs()["tinyworld"]
    saved = saved_per_token(config)
    est = __import__("llmbook.memory", fromlist=["estimate"]).estimate(config, batch_size=4, seq_len=128, saved=saved)
    terms = {t.name: t.bytes for t in est.terms}
    n = 4 * 128
    assert terms["activations"] == 6 * saved.layer * n + saved.layer_constant
    assert terms["loss gradient buffers"] == 2 * n * config.vocab_size * 4
    assert est.peak == max(est.phase_bytes.values()) and est.peak_phase in est.phases
    state = training_state(config)
    assert est.phase_bytes["optimizer step"] == state.total + terms["optimizer step buffers"]
    assert est.phase_bytes["backward start"] == (state.total - terms["gradients"] + terms["activations"]
                                                 + terms["logits and loss"] + terms["token ids"]
                                                 + terms["loss gradient buffers"])
    # A Hugging Face config dict is accepted as it is.
    assert estimate_of(QWEN2_1_5B, batch_size=1, seq_len=16).parameters == 1_543_714_304


def estimate_of(config, **kwargs):
    from llmbook.memory import estimate

    return estimate(config, **kwargs)


def test_a_fused_optimizer_has_no_step_buffers_and_16_bit_buffers_are_16_bit():
    config = _configs()["tinyworld"]
    saved = saved_per_token(config, "bfloat16")
    per_tensor = {t.name: t.bytes for t in estimate_of(config, param_dtype="bfloat16", saved=saved).terms}
    fused = {t.name: t.bytes for t in estimate_of(config, param_dtype="bfloat16", saved=saved,
                                                   fused_optimizer=True).terms}
    assert fused["optimizer step buffers"] == 0
    assert per_tensor["optimizer step buffers"] == 2 * 1499 * 256 * 2  # the embedding, in bfloat16


def test_estimate_refuses_what_it_cannot_account_for():
    config = _configs()["tinyworld"]
    full = saved_per_token(config)
    with pytest.raises(ValueError, match="saved was measured for lora_rank=None"):
        estimate_of(config, method="lora", lora_rank=4, saved=full)
    with pytest.raises(ValueError, match="gradient_checkpointing"):
        estimate_of(config, gradient_checkpointing="yes", saved=full)
    with pytest.raises(ValueError, match="master_weights=True is for method='full'"):
        estimate_of(config, method="lora", lora_rank=4, param_dtype="bfloat16", master_weights=True)
    with pytest.raises(ValueError, match="seq_len"):
        estimate_of(config, seq_len=10**6, saved=full)


def test_lora_saves_less_than_full_training():
    config = _configs()["tinyworld"]
    full, lora = saved_per_token(config), saved_per_token(config, lora_rank=8, lora_targets=list(LORA_TARGETS))
    assert lora.lora_rank == 8 and lora.ids == 0  # a frozen embedding keeps no ids
    assert lora.layer < full.layer and lora.head < full.head


@pytest.mark.parametrize("checkpointing", [False, True])
def test_estimate_is_within_ten_percent_of_a_measured_training_step(checkpointing):
    """Two real steps of llmbook.train in a fresh process, against the estimate (the chapter's target)."""
    from llmbook.memory import measure_peak

    config = _configs()["tinyworld"]
    measured = measure_peak("tinyworld-main", batch_size=8, seq_len=256, gradient_checkpointing=checkpointing)
    est = estimate_of(config, batch_size=8, seq_len=256, gradient_checkpointing=checkpointing)
    assert abs(est.peak / measured["peak_bytes"] - 1) < 0.10, (est.peak, measured["peak_bytes"])


def test_measure_peak_refuses_bad_input():
    from llmbook.memory import measure_peak

    with pytest.raises(ValueError, match="QLoRA"):
        measure_peak("tinyworld-main", method="qlora", lora_rank=4)
    with pytest.raises(ValueError, match="steps"):
        measure_peak("tinyworld-main", steps=1)
    with pytest.raises(ValueError, match="lora_rank is required"):
        measure_peak("tinyworld-main", method="lora")


def test_committed_measurements_are_the_grid_and_meet_the_target():
    from llmbook.memory import MEASURE_GRID

    results = json.loads((ASSETS_DIR / "results" / "memory.json").read_text())
    assert {"settings", "versions", "machine"} <= set(results), "written by python -m llmbook.memory"
    rows = results["rows"]
    assert all(r["measured_peak_bytes"] % 1024 == 0 for r in rows), "the kernel counts memory in KiB"
    assert [r["label"] for r in rows] == [g[0] for g in MEASURE_GRID]
    for row, (label, model, method, dtype, b, t, checkpointing, rank) in zip(rows, MEASURE_GRID):
        assert (row["model"], row["method"], row["param_dtype"], row["batch_size"], row["seq_len"],
                row["gradient_checkpointing"], row["lora_rank"]) == (model, method, dtype, b, t, checkpointing, rank)
        assert row["estimated_peak_bytes"] == max(row["estimated_phase_bytes"].values())
        assert abs(row["estimated_peak_bytes"] / row["measured_peak_bytes"] - 1) < 0.10, label
