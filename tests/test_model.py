"""Unit tests of llmbook.model: configuration, bad input, KV cache, left padding, dtypes."""

from __future__ import annotations

import pytest
import torch

from llmbook.model import CausalLM, KVCache, ModelConfig, count_parameters
from model_helpers import make_pair


def small_config(**overrides) -> ModelConfig:
    base = dict(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=40)
    base.update(overrides)
    return ModelConfig(**base)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = CausalLM(small_config()).eval()
    m.reset_parameters(std=0.15)
    return m


# ---------------------------------------------------------------- configuration
@pytest.mark.parametrize("overrides, match", [
    (dict(num_key_value_heads=3), "multiple of num_key_value_heads"),
    (dict(hidden_size=0), "hidden_size must be an integer >= 1"),
    (dict(head_dim=7), "head_dim must be even"),
    (dict(rope_theta=0.5), "rope_theta"),
    (dict(rms_norm_eps=0.0), "rms_norm_eps"),
    (dict(bos_token_id=50), r"bos_token_id must be None or token id\(s\) in \[0, 49\]"),
    (dict(eos_token_id=[1, 99]), "eos_token_id"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), r"'yarn' is not supported; supported types: \['default', 'llama3'\]"),
    (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}), "needs the key 'low_freq_factor'"),
    (dict(model_type="gpt2"), "model_type must be one of"),
])
def test_config_validation(overrides, match):
    with pytest.raises(ValueError, match=match):
        small_config(**overrides)


def test_config_defaults_and_hf_round_trip():
    c = small_config(num_key_value_heads=None, head_dim=None, tie_word_embeddings=True,
                     rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
    assert c.num_key_value_heads == 4 and c.head_dim == 8
    hf = c.to_hf()
    assert hf["architectures"] == ["LlamaForCausalLM"] and hf["model_type"] == "llama"
    assert ModelConfig.from_hf(hf) == c


def test_from_hf_reads_transformers5_rope_parameters_and_refuses_unknowns():
    hf = small_config().to_hf()
    del hf["rope_theta"], hf["rope_scaling"]
    hf["rope_parameters"] = {"rope_type": "default", "rope_theta": 12345.0}
    c = ModelConfig.from_hf(hf)
    assert c.rope_theta == 12345.0 and c.rope_scaling is None
    with pytest.raises(ValueError, match=r"supported architectures: \['LlamaForCausalLM', 'Qwen2ForCausalLM'\]"):
        ModelConfig.from_hf({**hf, "architectures": ["MistralForCausalLM"], "model_type": "mistral"})
    with pytest.raises(ValueError, match="hidden_act 'gelu'"):
        ModelConfig.from_hf({**hf, "hidden_act": "gelu"})
    qwen = {**hf, "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}
    with pytest.raises(ValueError, match="sliding_window"):
        ModelConfig.from_hf({**qwen, "use_sliding_window": True, "sliding_window": 16, "max_window_layers": 0})
    with pytest.raises(ValueError, match="Qwen2ForCausalLM"):
        small_config().to_hf("Qwen2ForCausalLM")  # Qwen2 needs q/k/v bias


def test_parameter_names_follow_hugging_face(model):
    names = set(model.state_dict())
    for expected in ["model.embed_tokens.weight", "model.layers.1.self_attn.q_proj.weight", "model.layers.0.self_attn.o_proj.weight",
                     "model.layers.0.mlp.gate_proj.weight", "model.layers.0.input_layernorm.weight",
                     "model.layers.0.post_attention_layernorm.weight", "model.norm.weight", "lm_head.weight"]:
        assert expected in names
    assert not any("rotary" in n for n in names)  # derived tables are not weights


def test_count_parameters_counts_tied_embedding_once():
    c = small_config()
    per_layer = 2 * 32 + 32 * 32 + 2 * 32 * 16 + 32 * 32 + 3 * 32 * 48  # norms, q, k+v (2 kv heads of 8), o, mlp
    untied = CausalLM(c)
    assert count_parameters(untied) == untied.num_parameters() == 2 * 50 * 32 + 2 * per_layer + 32
    tied = CausalLM(small_config(tie_word_embeddings=True))
    assert tied.num_parameters() == 50 * 32 + 2 * per_layer + 32
    assert tied.num_parameters(exclude_embeddings=True) == 2 * per_layer + 32
    with pytest.raises(ValueError, match="module must be"):
        count_parameters("model")


# ---------------------------------------------------------------- bad input
def test_bad_inputs_raise_clear_errors(model):
    with pytest.raises(ValueError, match=r"token ids in \[0, 49\], got values in \[0, 50\]"):
        model(torch.tensor([[0, 50]]))
    with pytest.raises(ValueError, match=r"token ids in \[0, 49\]"):
        model(torch.tensor([[-1, 3]]))
    with pytest.raises(ValueError, match="non-empty"):
        model(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="integer dtype"):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"shape \(batch, time\)"):
        model(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="41 tokens exceeds max_position_embeddings=40"):
        model(torch.zeros(1, 41, dtype=torch.long))
    with pytest.raises(ValueError, match="on meta but the model is on cpu"):
        model(torch.zeros(1, 3, dtype=torch.long, device="meta"))
    with pytest.raises(ValueError, match="attention_mask must be a tensor of shape"):
        model(torch.zeros(1, 3, dtype=torch.long), attention_mask=torch.ones(1, 4))
    with pytest.raises(ValueError, match="only 0"):
        model(torch.zeros(1, 3, dtype=torch.long), attention_mask=torch.full((1, 3), 2))


def test_cache_overflow_and_context_limit(model):
    cache = model.new_cache(1, 10)
    model(torch.zeros(1, 8, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="cache holds max_length=10 tokens; cannot append 3 to its 8"):
        model(torch.zeros(1, 3, dtype=torch.long), cache=cache)
    full = model.new_cache(1)
    model(torch.zeros(1, 38, dtype=torch.long), cache=full)
    with pytest.raises(ValueError, match="38 cached \\+ 3 new = 41 tokens exceeds max_position_embeddings=40"):
        model(torch.zeros(1, 3, dtype=torch.long), cache=full)
    with pytest.raises(ValueError, match="batch_size=1, input_ids has batch 2"):
        model(torch.zeros(2, 1, dtype=torch.long), cache=full)
    with pytest.raises(ValueError, match=r"max_length must be in \[1, 40\]"):
        model.new_cache(1, 41)


def test_float16_on_cpu_is_refused():
    with pytest.raises(ValueError, match="float16 is not supported on the CPU"):
        CausalLM(small_config(), dtype=torch.float16)


# ---------------------------------------------------------------- KV cache
def test_incremental_decoding_matches_full_forward(model):
    ids = torch.randint(0, 50, (2, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(2, 30)
        pieces = [model(ids[:, a:b], cache=cache) for a, b in [(0, 11), (11, 12), (12, 20), (20, 30)]]
    assert cache.length == 30 and cache.next_position.tolist() == [30, 30]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=0, atol=1e-5)


def test_decode_step_feeds_only_the_new_token(model):
    seen = []
    handle = model.model.embed_tokens.register_forward_hook(lambda m, inp, out: seen.append(tuple(inp[0].shape)))
    try:
        with torch.no_grad():
            cache = model.new_cache(1, 20)
            model(torch.zeros(1, 12, dtype=torch.long), cache=cache)
            for _ in range(3):
                model(torch.ones(1, 1, dtype=torch.long), cache=cache)
    finally:
        handle.remove()
    assert seen == [(1, 12), (1, 1), (1, 1), (1, 1)]
    assert "length=15/20" in repr(cache)


def test_cache_truncate_rolls_back(model):
    ids = torch.randint(0, 50, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cache = model.new_cache(1, 20)
        model(ids[:, :8], cache=cache)
        model(torch.full((1, 4), 7), cache=cache)  # a rejected continuation
        cache.truncate(8)
        redo = model(ids[:, 8:], cache=cache)
        full = model(ids)
    torch.testing.assert_close(redo, full[:, 8:], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"length must be an integer in \[0, 12\]"):
        cache.truncate(13)


def test_left_padded_batch_matches_each_row_alone(model):
    rows = [[5, 9, 3, 7, 1, 2, 8, 4, 6], [11, 12, 13], [20, 21, 22, 23, 24, 25]]
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    with torch.no_grad():
        padded = model(ids, attention_mask=mask)
        cache = model.new_cache(3, width + 4)
        model(ids, cache=cache, attention_mask=mask)
        step = model(torch.tensor([[3], [4], [5]]), cache=cache)
        for i, r in enumerate(rows):
            alone = model(torch.tensor([r]))
            assert torch.isfinite(padded[i]).all()
            torch.testing.assert_close(padded[i, width - len(r):], alone[0], rtol=0, atol=1e-5)
            alone_next = model(torch.tensor([r + [3 + i]]))[:, -1]
            torch.testing.assert_close(step[i, -1], alone_next[0], rtol=0, atol=1e-5)


def test_bfloat16_logits_close_to_float32(model):
    ids = torch.randint(0, 50, (1, 16), generator=torch.Generator().manual_seed(2))
    half = CausalLM(model.config, dtype="bf16").eval()
    half.load_state_dict(model.state_dict())
    with torch.no_grad():
        ref, got = model(ids), half(ids)
    assert got.dtype == torch.bfloat16 and half.model.rotary_emb.inv_freq.dtype == torch.float32
    # bf16 keeps 8 bits of mantissa: relative error ~ 2^-8 per op; a few percent of the logit scale end to end.
    assert (got.float() - ref).abs().max() <= 0.05 * ref.abs().max()


# ---------------------------------------------------------------- CUDA
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.cuda
@cuda
def test_cuda_bfloat16_close_to_float32_and_cache_greedy_matches():
    model, _ = make_pair()
    ids = torch.randint(4, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(ids)
        gpu = CausalLM(model.config, device="cuda", dtype=torch.bfloat16).eval()
        gpu.load_state_dict(model.state_dict())
        got = gpu(ids.cuda()).float().cpu()
        assert (got - ref).abs().max() <= 0.05 * ref.abs().max()

        out_cached, out_full = ids.cuda(), ids.cuda()
        cache = gpu.new_cache(2, 24 + 20)
        logits = gpu(out_cached, cache=cache, last_only=True)
        for _ in range(20):
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            out_cached = torch.cat([out_cached, nxt], 1)
            logits = gpu(nxt, cache=cache)
            out_full = torch.cat([out_full, gpu(out_full)[:, -1].argmax(-1, keepdim=True)], 1)
    # The two paths round differently in bf16; greedy choices agree unless a logit gap is below that rounding.
    assert torch.equal(out_cached, out_full)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_dtypes_run_and_match(dtype):
    model, _ = make_pair()
    ids = torch.randint(4, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    gpu = CausalLM(model.config, device="cuda", dtype=dtype).eval()
    gpu.load_state_dict(model.state_dict())
    with torch.no_grad():
        ref, got = model(ids), gpu(ids.cuda()).float().cpu()
    tol = 1e-3 if dtype == torch.float32 else 0.01 * ref.abs().max().item()  # TF32 / fp16's 11-bit mantissa
    assert (got - ref).abs().max() <= tol


# ---------------------------------------------------------------- config.json keys: read as transformers, or refused
def _llama_hf(**changes):
    hf = small_config().to_hf()
    hf.update(changes)
    return hf


@pytest.mark.parametrize("changes, match", [
    (dict(hidden_act="gelu"), "hidden_act 'gelu' is not supported"),
    (dict(mlp_bias=True), "mlp_bias=True is not supported"),
    (dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), "'linear' is not supported"),
    (dict(rope_scaling={"type": "dynamic", "factor": 2.0}), "'dynamic' is not supported"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}), "'yarn' is not supported"),
    (dict(partial_rotary_factor=0.5), "partial_rotary_factor=0.5 is not supported"),
    (dict(rope_parameters={"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.25}), "partial_rotary_factor=0.25"),
    (dict(quantization_config={"quant_method": "fp8"}), "quantization_config .*'fp8'.* is not supported"),
    (dict(architectures=["LlamaForCausalLM", "Qwen2ForCausalLM"]), "name more than one model"),
    (dict(architectures=["LlamaForCausalLM", "LlamaForSequenceClassification"]), "is not supported; supported architectures"),
    (dict(model_type="qwen2"), "model_type 'qwen2' disagrees with architectures \\['LlamaForCausalLM'\\]"),
    (dict(architectures=["Qwen2ForCausalLM"]), "model_type 'llama' disagrees with architectures"),
    (dict(model_type="mistral"), "model_type 'mistral' disagrees"),
    (dict(use_sliding_window=True), "use_sliding_window=True is not supported"),
])
def test_from_hf_refuses_what_it_would_build_differently(changes, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig.from_hf(_llama_hf(**changes))


def test_from_hf_accepts_what_changes_nothing_at_inference():
    base = ModelConfig.from_hf(_llama_hf())
    # pretraining_tp only sliced the matrix products in pretraining (transformers 5 ignores it);
    # attention dropout is off at inference; 'swish' is SiLU; a single architecture without model_type.
    for changes in (dict(pretraining_tp=4), dict(attention_dropout=0.1), dict(hidden_act="swish"),
                    dict(partial_rotary_factor=1.0), dict(model_type=None)):
        c = ModelConfig.from_hf(_llama_hf(**changes))
        assert {k: v for k, v in c.to_dict().items() if k != "extra"} == {k: v for k, v in base.to_dict().items() if k != "extra"}
    assert ModelConfig.from_hf(_llama_hf(attention_dropout=0.1)).extra["attention_dropout"] == 0.1


def test_qwen2_sliding_window_refused_only_where_transformers_uses_it():
    qwen = _llama_hf(architectures=["Qwen2ForCausalLM"], model_type="qwen2", attention_bias=None)
    # transformers: a window only with use_sliding_window, only in layers >= max_window_layers
    # (or marked 'sliding_attention' in layer_types), and only if shorter than the context.
    fine = [dict(use_sliding_window=False, sliding_window=8, max_window_layers=0),
            dict(use_sliding_window=True, sliding_window=8, max_window_layers=2),  # both layers below it
            dict(use_sliding_window=True, sliding_window=40, max_window_layers=0),  # window = context
            dict(use_sliding_window=True, sliding_window=8, layer_types=["full_attention"] * 2),
            dict(use_sliding_window=False, sliding_window=8, layer_types=["sliding_attention"] * 2)]
    for changes in fine:
        assert ModelConfig.from_hf({**qwen, **changes}).model_type == "qwen2"
    refused = [dict(use_sliding_window=True, sliding_window=8, max_window_layers=1),
               dict(use_sliding_window=True, sliding_window=8, layer_types=["full_attention", "sliding_attention"])]
    for changes in refused:
        with pytest.raises(ValueError, match=r"sliding_window=8 < max_position_embeddings=40 in layers \[1\]"):
            ModelConfig.from_hf({**qwen, **changes})
    del qwen["max_position_embeddings"]
    assert ModelConfig.from_hf(qwen).max_position_embeddings == 32768  # Qwen2Config's default, not Llama's 2048
