"""llmbook.hub: loading Hugging Face-layout directories, shipped names, hub ids, and saving."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llmbook.generate import generate
from llmbook.hub import ModelLoadError, load, load_model, save_pretrained
from llmbook.tokenizer import Tokenizer
from model_helpers import make_hf_model, make_pair, make_tokenizer, scripted_model

LIB = str(Path(__file__).resolve().parents[1] / "lib")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hf_llama")
    hf = make_hf_model("llama_gqa_tied", directory)
    make_tokenizer().save(str(directory / "tokenizer.json"))  # no tokenizer_config.json: ids come from config.json
    return directory, hf


def test_load_local_directory(hf_dir):
    directory, hf = hf_dir
    model, tok = load(directory, device="cpu")
    assert isinstance(tok, Tokenizer) and tok.bos_token_id == 1 and tok.eos_token_id == 2
    assert not model.training and model.dtype == torch.float32
    # weights live in fresh (64-byte aligned) memory, not in the memory-mapped file at the header's offset
    assert all(p.data_ptr() % 64 == 0 for p in model.parameters())
    ids = torch.randint(0, 300, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max() <= 1e-4
    bf16, _ = load(str(directory), device="cpu", dtype="bf16")
    assert bf16.dtype == torch.bfloat16 and bf16.lm_head.weight is bf16.model.embed_tokens.weight
    with pytest.raises(ValueError, match="float16 is not supported on the CPU"):
        load(directory, device="cpu", dtype="float16")


def test_sharded_checkpoint(tmp_path, hf_dir):
    _, hf = hf_dir
    hf.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    model = load_model(tmp_path, device="cpu")
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max() <= 1e-4
    shard = sorted(tmp_path.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(ModelLoadError, match=f"missing weights shard .*{shard.name}"):
        load_model(tmp_path, device="cpu")


def _copy_config(src: Path, dst: Path, **changes) -> Path:
    config = json.loads((src / "config.json").read_text())
    config.update(changes)
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_errors_name_the_file_or_reason(tmp_path, hf_dir):
    directory, _ = hf_dir
    bad = _copy_config(directory, tmp_path / "gpt2", architectures=["GPT2LMHeadModel"], model_type="gpt2")
    with pytest.raises(ModelLoadError, match=r"supported architectures: \['LlamaForCausalLM', 'Qwen2ForCausalLM'\]"):
        load(bad, device="cpu")
    empty = _copy_config(directory, tmp_path / "noweights")
    with pytest.raises(ModelLoadError, match="no weights in .*noweights: expected model.safetensors"):
        load(empty, device="cpu")
    corrupt = _copy_config(directory, tmp_path / "corrupt")
    (corrupt / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header")
    with pytest.raises(ModelLoadError, match="corrupt or unreadable weights file .*corrupt/model.safetensors"):
        load(corrupt, device="cpu")
    wrong = _copy_config(directory, tmp_path / "wrong", hidden_size=32, head_dim=8)
    (wrong / "model.safetensors").write_bytes((directory / "model.safetensors").read_bytes())
    with pytest.raises(ModelLoadError, match="do not match"):
        load(wrong, device="cpu")
    (tmp_path / "noconfig").mkdir()
    with pytest.raises(ModelLoadError, match="missing file: .*noconfig/config.json"):
        load(tmp_path / "noconfig", device="cpu")
    with pytest.raises(ModelLoadError, match="model directory not found: .*does-not-exist"):
        load(tmp_path / "does-not-exist")
    with pytest.raises(ModelLoadError, match="model directory not found"):
        load("./relative/missing/dir")
    with pytest.raises(ValueError, match="name_or_path must be a non-empty"):
        load("")


@pytest.mark.parametrize("name", ["tinyworld-main", "tinyworld-draft"])
def test_shipped_names_are_reserved(name, monkeypatch, tmp_path):
    # An install without the weights (e.g. a source checkout with the assets removed) says so.
    import llmbook.hub as hub

    monkeypatch.setattr(hub, "ASSETS_DIR", tmp_path)
    with pytest.raises(ModelLoadError, match=f"model '{name}' is not shipped in this install"):
        load(name)


def test_hub_id_offline_fails_fast_and_clearly(tmp_path):
    code = (
        "from llmbook.hub import load, ModelLoadError\n"
        "try:\n    load('llmbook-test/definitely-not-a-model')\n"
        "except ModelLoadError as e:\n    print('ERR', e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "PYTHONPATH": LIB}
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - start
    assert out.returncode == 0, out.stderr
    assert "ERR could not get 'llmbook-test/definitely-not-a-model' from the Hugging Face Hub" in out.stdout
    assert elapsed < 30


def test_save_pretrained_writes_hf_layout(tmp_path):
    model, tok = make_pair(tie=True)
    save_pretrained(model, tok, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert config["torch_dtype"] == "float32" and config["tie_word_embeddings"] is True
    weights = load_file(str(tmp_path / "model.safetensors"))
    assert "lm_head.weight" not in weights and "model.embed_tokens.weight" in weights  # tied: stored once
    assert (tmp_path / "tokenizer.json").is_file() and (tmp_path / "tokenizer_config.json").is_file()
    again, tok2 = load(tmp_path, device="cpu")
    ids = torch.tensor([tok.encode("The cat sat")])
    with torch.no_grad():
        assert torch.equal(again(ids), model(ids))
    assert tok2.encode("café 🙂") == tok.encode("café 🙂") and tok2.eos_token_id == 2

    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert (hf(ids).logits - model(ids)).abs().max() <= 1e-4
    with pytest.raises(ValueError, match="architecture must be one of"):
        save_pretrained(model, tok, tmp_path / "x", architecture="GPT2LMHeadModel")
    half = make_pair()[0].to(torch.bfloat16)
    save_pretrained(half, None, tmp_path / "bf16")
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"


# ---------------------------------------------------------------- what is on disk vs what is built
def _copy_checkpoint(src: Path, dst: Path, **config_changes) -> Path:
    """A copy of a saved checkpoint directory with some config.json keys changed (None deletes a key)."""
    import shutil

    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    for key, value in config_changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def _assert_same_logits(directory: Path, hf) -> None:
    model = load_model(directory, device="cpu")
    ids = torch.tensor([[5, 17, 99, 240, 3, 64, 128]])
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max() <= 1e-4


def test_generation_config_eos_list_ends_generation(tmp_path, hf_dir):
    directory, _ = hf_dir
    model, tok = load(directory, device="cpu")
    # transformers' save_pretrained writes a generation_config.json from config.json's ids
    assert model.generation_config.eos_token_id == [2] and model.generation_config.extra["_from_model_config"]
    free = generate(model, tok, "The cat", max_new_tokens=20, temperature=0, stop_at_eos=False)
    stop_id = free.tokens[0][5]
    assert stop_id not in (1, 2) and stop_id not in free.tokens[0][:5]
    llama3 = _copy_checkpoint(directory, tmp_path / "llama3")
    (llama3 / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 1, "eos_token_id": [2, stop_id], "do_sample": True, "temperature": 0.6, "top_p": 0.9}))
    model, tok = load(llama3, device="cpu")
    assert model.generation_config.eos_token_id == [2, stop_id] and tok.eos_token_id == 2
    result = generate(model, tok, "The cat", max_new_tokens=20, temperature=0)
    assert result.tokens[0] == free.tokens[0][:6] and result.finish_reasons == ["eos"]
    assert result.text == tok.decode(tok.encode("The cat") + free.tokens[0][:5])[len("The cat"):]
    # the sampling settings are the checkpoint's recommendation, applied only when passed (read as transformers reads them)
    kwargs = model.generation_config.sampling_kwargs()
    assert kwargs == {"temperature": 0.6, "top_k": 50, "top_p": 0.9, "min_p": None}
    assert generate(model, tok, "The cat", seed=3).tokens == generate(model, tok, "The cat", seed=3, temperature=1.0).tokens
    # save -> load keeps the file
    out = save_pretrained(model, tok, tmp_path / "saved")
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == [2, stop_id]
    assert load_model(out, device="cpu").generation_config == model.generation_config


def test_generation_config_sampling_kwargs_and_errors(tmp_path, hf_dir):
    from llmbook.model import GenerationConfig

    config = load_model(hf_dir[0], device="cpu").config
    greedy = GenerationConfig.from_hf({"eos_token_id": 2}, config)
    assert greedy.sampling_kwargs() == {"temperature": 0.0}  # do_sample unset: transformers is greedy
    assert greedy.bos_token_id == 1  # left out of the file: config.json's
    assert GenerationConfig.from_hf({"do_sample": True, "top_k": 0, "min_p": 0.05, "max_new_tokens": 9}, config).sampling_kwargs() == \
        {"temperature": 1.0, "top_k": None, "top_p": None, "min_p": 0.05, "max_new_tokens": 9}
    with pytest.raises(ValueError, match=r"sets \{'repetition_penalty': 1.1\}, which llmbook.generate does not implement"):
        GenerationConfig.from_hf({"do_sample": True, "repetition_penalty": 1.1}, config).sampling_kwargs()
    assert GenerationConfig.from_hf({"repetition_penalty": 1.0, "num_beams": 1}, config).sampling_kwargs() == {"temperature": 0.0}
    bad = _copy_checkpoint(hf_dir[0], tmp_path / "bad")
    (bad / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 999]}))
    with pytest.raises(ModelLoadError, match=r"generation_config.json: eos_token_id must be None or token id\(s\) in \[0, 319\]"):
        load_model(bad, device="cpu")
    (bad / "generation_config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="corrupt JSON file .*generation_config.json"):
        load_model(bad, device="cpu")


def test_tied_config_with_a_different_lm_head_loads_untied_as_transformers(tmp_path, hf_dir):
    from safetensors.torch import save_file

    directory, _ = hf_dir
    untied = _copy_checkpoint(directory, tmp_path / "untied")
    state = load_file(str(untied / "model.safetensors"))
    state["lm_head.weight"] = torch.randn_like(state["model.embed_tokens.weight"])
    save_file(state, str(untied / "model.safetensors"), metadata={"format": "pt"})
    with pytest.warns(UserWarning, match="lm_head.weight that differs from model.embed_tokens.weight; loading both, untied"):
        model = load_model(untied, device="cpu")
    assert not model.config.tie_word_embeddings
    assert torch.equal(model.lm_head.weight, state["lm_head.weight"])
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(untied).eval()
    assert not torch.equal(hf.lm_head.weight, hf.model.embed_tokens.weight)  # transformers keeps both too
    with pytest.warns(UserWarning, match="untied"):
        _assert_same_logits(untied, hf)
    # the same matrix stored twice: tied, no warning
    state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
    save_file(state, str(untied / "model.safetensors"), metadata={"format": "pt"})
    model = load_model(untied, device="cpu")
    assert model.config.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight


def test_weights_that_are_not_plain_floats_are_refused(tmp_path, hf_dir):
    from safetensors.torch import save_file

    quantized = _copy_checkpoint(hf_dir[0], tmp_path / "fp8")
    state = load_file(str(quantized / "model.safetensors"))
    state["model.layers.0.mlp.up_proj.weight"] = state["model.layers.0.mlp.up_proj.weight"].to(torch.float8_e4m3fn)
    save_file(state, str(quantized / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="weight model.layers.0.mlp.up_proj.weight in .* is torch.float8_e4m3fn"):
        load_model(quantized, device="cpu")
    state["model.layers.0.mlp.up_proj.weight"] = torch.zeros(112, 64, dtype=torch.int8)
    save_file(state, str(quantized / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="is torch.int8; only float32/float16/bfloat16"):
        load_model(quantized, device="cpu")


def test_weights_in_another_dtype_than_torch_dtype_load_in_the_requested_dtype(tmp_path, hf_dir):
    directory, hf = hf_dir
    import copy

    half = tmp_path / "bf16"
    copy.deepcopy(hf).to(torch.bfloat16).save_pretrained(half)
    config = json.loads((half / "config.json").read_text())
    config["torch_dtype"] = config["dtype"] = "float16"  # says float16, holds bfloat16
    (half / "config.json").write_text(json.dumps(config))
    model = load_model(half, device="cpu")  # llmbook's default: float32 (exact for bf16 weights)
    assert model.dtype == torch.float32
    assert torch.equal(model.model.embed_tokens.weight, load_file(str(half / "model.safetensors"))["model.embed_tokens.weight"].float())
    assert load_model(half, device="cpu", dtype="bfloat16").dtype == torch.bfloat16


@pytest.mark.parametrize("changes", [dict(pretraining_tp=2), dict(attention_dropout=0.1)])
def test_keys_that_change_nothing_at_inference_load_with_the_same_logits(tmp_path, hf_dir, changes):
    directory, hf = hf_dir
    _assert_same_logits(_copy_checkpoint(directory, tmp_path / "x", **changes), hf)


def test_head_dim_other_than_hidden_over_heads_matches_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    for name, cls in (("llama", transformers.LlamaConfig), ("qwen2", transformers.Qwen2Config)):
        config = cls(vocab_size=320, hidden_size=64, intermediate_size=112, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=32, max_position_embeddings=64)
        torch.manual_seed(0)
        hf = transformers.AutoModelForCausalLM.from_config(config).eval()
        with torch.no_grad():
            for p in hf.parameters():
                p.copy_(0.1 * torch.randn_like(p))
        hf.save_pretrained(tmp_path / name)
        assert load_model(tmp_path / name, device="cpu").config.head_dim == 32
        _assert_same_logits(tmp_path / name, hf)


def test_qwen2_with_use_sliding_window_but_no_sliding_layer_matches_transformers(tmp_path):
    make_hf_model("qwen2_bias", tmp_path / "q")
    directory = _copy_checkpoint(tmp_path / "q", tmp_path / "q2", use_sliding_window=True, sliding_window=4,
                                 max_window_layers=2, layer_types=None)
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
    assert hf.config.layer_types == ["full_attention", "full_attention"]
    _assert_same_logits(directory, hf)
    refused = _copy_checkpoint(tmp_path / "q", tmp_path / "q3", use_sliding_window=True, sliding_window=4,
                               max_window_layers=1, layer_types=None)
    with pytest.raises(ModelLoadError, match=r"config.json: use_sliding_window=True with sliding_window=4"):
        load_model(refused, device="cpu")


def test_tokenizer_files_decide_special_tokens_and_generate_stops_at_every_eos(tmp_path, hf_dir):
    # SmolLM2/Qwen2.5 style: tokenizer_config.json names EOS '<|eot|>' (3), config.json eos_token_id 2.
    directory, _ = hf_dir
    both = _copy_checkpoint(directory, tmp_path / "both")
    Tokenizer(make_tokenizer(), eos_token_id=3).save(both)
    model, tok = load(both, device="cpu")
    assert tok.eos_token_id == 3 and model.config.eos_token_id == 2  # as transformers: each file keeps its own
    assert tok.bos_token_id == 1  # tokenizer files leave BOS unset: config.json's fills it
    words = tok.encode(" sat on the mat")
    for eos in (2, 3):
        scripted = scripted_model(320, [words[:2] + [eos] + words[2:]])
        scripted.config.eos_token_id = 2
        ended = generate(scripted, tok, "The cat", max_new_tokens=len(words) + 1, temperature=0)
        assert ended.finish_reasons == ["eos"] and ended.tokens[0] == words[:2] + [eos]
