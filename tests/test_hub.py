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

from llmbook.hub import ModelLoadError, load, load_model, save_pretrained
from llmbook.tokenizer import Tokenizer
from model_helpers import make_hf_model, make_pair, make_tokenizer

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
