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
    assert lora.total == 2 * (n + adapters) + 2 * adapters + 8 * adapters
    qlora = training_state(config, method="qlora", param_dtype="bfloat16", lora_rank=8)
    weights = {t.name: t.bytes for t in qlora.terms}["weights"]
    assert weights == round(n * NF4_BITS_PER_WEIGHT / 8) + 2 * adapters
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
