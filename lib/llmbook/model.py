"""A decoder-only transformer of the Llama family, written to be read.

The whole model, bottom to top::

    token ids (B, T)
      -> embed_tokens                                  (B, T, D)
      -> L x DecoderLayer:
             x = x + Attention(RMSNorm(x))             grouped-query attention with RoPE
             x = x + MLP(RMSNorm(x))                   SwiGLU feed-forward
      -> RMSNorm -> lm_head                            (B, T, V) logits

Shapes in comments use B = batch, T = new tokens, S = all tokens attended to (cache + new),
D = hidden_size, H = query heads, K = key/value heads, d = head_dim, V = vocab_size.

Parameter names are exactly those of Hugging Face ``transformers`` (``model.layers.0.self_attn.q_proj.weight``,
...), so a checkpoint's ``model.safetensors`` loads as is, and the same weights give the same logits
(``tests/test_model_parity.py`` checks it for Llama, SmolLM and Qwen2 configurations).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from llmbook.device import resolve_dtype

__all__ = [
    "ModelConfig",
    "GenerationConfig",
    "RMSNorm",
    "RotaryEmbedding",
    "Attention",
    "MLP",
    "DecoderLayer",
    "Decoder",
    "CausalLM",
    "KVCache",
    "count_parameters",
    "SUPPORTED_ARCHITECTURES",
    "POSITION_ENCODINGS",
    "alibi_slopes",
    "alibi_bias",
]

# Hugging Face architecture name -> model_type. SmolLM checkpoints are LlamaForCausalLM.
SUPPORTED_ARCHITECTURES: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
}
_SUPPORTED_ROPE_TYPES = ("default", "llama3")
# How a token's position reaches attention. "rope" is Llama's (and the only one a Hugging Face
# Llama/Qwen2 config.json can express); the others exist to compare against it (chapter 9):
# "nope" gives no position signal at all beyond the causal mask (Kazemnejad et al. 2023),
# "alibi" adds -m_h (i - j) to the attention logits (Press et al. 2022), and "learned" adds a
# trained vector per absolute position to the token embedding (GPT-2).
POSITION_ENCODINGS = ("rope", "nope", "alibi", "learned")
# scaled_dot_product_attention(..., enable_gqa=True) exists from torch 2.5 on.
_SDPA_HAS_GQA = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _optional_token_id(name: str, value: Any, vocab_size: int) -> None:
    values = value if isinstance(value, (list, tuple)) else [value]
    for v in values:
        if v is None and not isinstance(value, (list, tuple)):
            continue
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < vocab_size:
            raise ValueError(f"{name} must be None or token id(s) in [0, {vocab_size - 1}], got {value!r}")


# transformers' defaults when config.json leaves max_position_embeddings out.
_DEFAULT_MAX_POSITIONS = {"llama": 2048, "qwen2": 32768}


def _refuse_qwen2_sliding_window(hf: dict[str, Any], max_positions: int) -> None:
    """Refuse a Qwen2 config whose attention transformers would limit to a sliding window.

    transformers (Qwen2Config) uses a window only when ``use_sliding_window`` is true, and then
    only in the layers ``layer_types`` marks ``"sliding_attention"`` (by default layers from
    ``max_window_layers`` on); a window as long as the context changes nothing.
    """
    if not hf.get("use_sliding_window", False):
        return
    window = hf.get("sliding_window", 4096)
    layers = hf.get("num_hidden_layers")
    layer_types = hf.get("layer_types")
    if layer_types is None:
        first = hf.get("max_window_layers", 28)
        layer_types = ["sliding_attention" if window is not None and i >= first else "full_attention"
                       for i in range(layers if isinstance(layers, int) else 0)]
    sliding = [i for i, kind in enumerate(layer_types) if kind == "sliding_attention"]
    if window is not None and sliding and window < max_positions:
        raise ValueError(
            f"use_sliding_window=True with sliding_window={window} < max_position_embeddings={max_positions} in "
            f"layers {sliding[:8]}{'...' if len(sliding) > 8 else ''} is not supported; this model implements full "
            "causal attention"
        )


@dataclass
class ModelConfig:
    """Hyper-parameters of the model; field names are those of Hugging Face ``config.json``.

    ``attention_bias`` puts a bias on the q, k and v projections; ``attention_output_bias`` on
    o_proj. Llama's ``attention_bias=True`` sets both; Qwen2 has q/k/v bias and no o_proj bias.
    ``rope_scaling`` is ``None`` or a Llama-3 style dict ``{"rope_type": "llama3", "factor",
    "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}``.
    """

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # None: same as num_attention_heads (multi-head attention)
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    position_encoding: str = "rope"  # one of POSITION_ENCODINGS
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    attention_output_bias: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    model_type: str = "llama"
    extra: dict[str, Any] = field(default_factory=dict, repr=False)  # other config.json keys, kept for to_hf

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None and isinstance(self.num_attention_heads, int) and self.num_attention_heads > 0:
            self.head_dim = self.hidden_size // self.num_attention_heads
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field outside its allowed range."""
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings"):
            _positive_int(name, getattr(self, name))
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads}) for grouped-query attention"
            )
        if self.position_encoding not in POSITION_ENCODINGS:
            raise ValueError(f"position_encoding must be one of {list(POSITION_ENCODINGS)}, got {self.position_encoding!r}")
        if self.position_encoding == "rope" and self.head_dim % 2 != 0:
            raise ValueError(f"head_dim must be even (RoPE rotates pairs of dimensions), got {self.head_dim}")
        if not (isinstance(self.rope_theta, (int, float)) and math.isfinite(self.rope_theta) and self.rope_theta > 1):
            raise ValueError(f"rope_theta must be a finite number > 1, got {self.rope_theta!r}")
        if not (isinstance(self.rms_norm_eps, (int, float)) and 0 < self.rms_norm_eps < 1):
            raise ValueError(f"rms_norm_eps must be in (0, 1), got {self.rms_norm_eps!r}")
        if self.model_type not in SUPPORTED_ARCHITECTURES.values():
            raise ValueError(f"model_type must be one of {sorted(set(SUPPORTED_ARCHITECTURES.values()))}, got {self.model_type!r}")
        for name in ("bos_token_id", "pad_token_id"):
            _optional_token_id(name, getattr(self, name), self.vocab_size)
        _optional_token_id("eos_token_id", self.eos_token_id, self.vocab_size)
        if self.rope_scaling is not None:
            self._validate_rope_scaling()

    def _validate_rope_scaling(self) -> None:
        scaling = self.rope_scaling
        if not isinstance(scaling, dict):
            raise ValueError(f"rope_scaling must be None or a dict, got {type(scaling).__name__}")
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind not in _SUPPORTED_ROPE_TYPES:
            raise ValueError(
                f"rope_scaling type {kind!r} is not supported; supported types: {list(_SUPPORTED_ROPE_TYPES)} "
                "(Llama-3 'llama3' frequency scaling, or 'default' for none)"
            )
        if kind == "llama3":
            for key in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
                if key not in scaling:
                    raise ValueError(f"rope_scaling of type 'llama3' needs the key {key!r}, got keys {sorted(scaling)}")
                value = scaling[key]
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                    raise ValueError(f"rope_scaling[{key!r}] must be a number > 0, got {value!r}")
            if not scaling["high_freq_factor"] > scaling["low_freq_factor"]:
                raise ValueError(
                    f"rope_scaling['high_freq_factor'] ({scaling['high_freq_factor']}) must be greater than "
                    f"rope_scaling['low_freq_factor'] ({scaling['low_freq_factor']})"
                )

    @property
    def rope_type(self) -> str:
        if self.rope_scaling is None:
            return "default"
        return self.rope_scaling.get("rope_type", self.rope_scaling.get("type"))

    # ------------------------------------------------------------------ Hugging Face config.json
    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> "ModelConfig":
        """Build from a Hugging Face ``config.json`` dict (Llama, SmolLM or Qwen2), refusing what this model lacks."""
        if not isinstance(hf, dict):
            raise ValueError(f"hf must be a dict parsed from config.json, got {type(hf).__name__}")
        supported = sorted(SUPPORTED_ARCHITECTURES)
        architectures = hf.get("architectures") or []
        model_type = hf.get("model_type")
        if not isinstance(architectures, list):
            raise ValueError(f"architectures must be a list of class names, got {architectures!r}")
        unknown = [a for a in architectures if a not in SUPPORTED_ARCHITECTURES]
        if unknown:
            raise ValueError(f"architecture {architectures} is not supported; supported architectures: {supported}")
        types = {SUPPORTED_ARCHITECTURES[a] for a in architectures}
        if len(types) > 1:
            raise ValueError(f"architectures {architectures} name more than one model; a checkpoint must be one of {supported}")
        if types:
            # transformers' AutoModelForCausalLM builds the class of model_type and never reads
            # architectures: when they disagree, the weights were written for one and would be read as the other.
            if model_type is not None and model_type not in types:
                raise ValueError(
                    f"model_type {model_type!r} disagrees with architectures {architectures} "
                    f"(model_type {next(iter(types))!r}); fix config.json so both name the same model"
                )
            model_type = next(iter(types))
        if model_type not in SUPPORTED_ARCHITECTURES.values():
            raise ValueError(f"model_type {model_type!r} is not supported; supported architectures: {supported}")
        act = hf.get("hidden_act", "silu")
        if act not in ("silu", "swish"):  # transformers' ACT2FN: 'swish' is SiLU too
            raise ValueError(f"hidden_act {act!r} is not supported; this model implements SwiGLU with 'silu'")
        if hf.get("mlp_bias", False):
            raise ValueError("mlp_bias=True is not supported; Llama-family MLPs here have no bias")
        if hf.get("quantization_config") is not None:
            method = hf["quantization_config"].get("quant_method") if isinstance(hf["quantization_config"], dict) else None
            raise ValueError(
                f"quantization_config (quant_method {method!r}) is not supported: the weights are stored quantized "
                "and this model reads plain floating-point weights; use a non-quantized checkpoint"
            )
        max_positions = hf.get("max_position_embeddings", _DEFAULT_MAX_POSITIONS[model_type])
        if model_type == "qwen2":
            _refuse_qwen2_sliding_window(hf, max_positions)
        elif hf.get("use_sliding_window", False):
            raise ValueError("use_sliding_window=True is not supported; this model implements full causal attention")
        # pretraining_tp > 1 only split the matrix products into slices in pretraining (the same
        # function); transformers ignores it too, so it is accepted whatever its value.

        # transformers >= 5 writes rope_parameters={"rope_type", "rope_theta", ...}; older files write
        # rope_theta plus rope_scaling={"rope_type" or "type", ...}. Accept both.
        rope_params = hf.get("rope_parameters")
        rope_scaling = hf.get("rope_scaling")
        rope_theta = hf.get("rope_theta")
        if isinstance(rope_params, dict):
            rope_theta = rope_params.get("rope_theta", rope_theta)
            if rope_scaling is None:
                rope_scaling = {k: v for k, v in rope_params.items() if k != "rope_theta"}
        if rope_theta is None:
            rope_theta = 10000.0
        if rope_scaling is not None:
            rope_scaling = dict(rope_scaling)
            kind = rope_scaling.pop("type", None)
            rope_scaling.setdefault("rope_type", kind)
            if rope_scaling.get("rope_type") == "default":
                rope_scaling = None

        partial = [src.get("partial_rotary_factor") for src in (hf, rope_scaling or {}, rope_params or {})
                   if isinstance(src, dict)]
        for factor in partial:
            if factor is not None and factor != 1:
                raise ValueError(
                    f"partial_rotary_factor={factor} is not supported: RoPE here rotates every dimension of a head "
                    "(transformers' Llama ignores the key with the default RoPE, which would be a different model)"
                )
        if rope_scaling is not None:
            rope_scaling.pop("partial_rotary_factor", None)

        if model_type == "qwen2":
            qkv_bias, o_bias = True, False
        else:
            qkv_bias = o_bias = bool(hf.get("attention_bias", False))

        mine = {
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "max_position_embeddings", "rope_theta", "rope_scaling",
            "rope_parameters", "rms_norm_eps", "tie_word_embeddings", "attention_bias", "bos_token_id",
            "eos_token_id", "pad_token_id", "model_type", "architectures", "hidden_act", "mlp_bias",
            "torch_dtype", "dtype", "transformers_version", "use_sliding_window", "pretraining_tp",
            "partial_rotary_factor",
        }
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_hidden_layers=hf["num_hidden_layers"],
            num_attention_heads=hf["num_attention_heads"],
            num_key_value_heads=hf.get("num_key_value_heads"),
            head_dim=hf.get("head_dim"),
            max_position_embeddings=max_positions,
            rope_theta=float(rope_theta),
            rope_scaling=rope_scaling,
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention_bias=qkv_bias,
            attention_output_bias=o_bias,
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=hf.get("eos_token_id"),
            pad_token_id=hf.get("pad_token_id"),
            model_type=model_type,
            extra={k: v for k, v in hf.items() if k not in mine},
        )

    def to_hf(self, architecture: str | None = None) -> dict[str, Any]:
        """A Hugging Face ``config.json`` dict for ``architecture`` (default: the one matching ``model_type``)."""
        if architecture is None:
            architecture = {v: k for k, v in SUPPORTED_ARCHITECTURES.items()}[self.model_type]
        if architecture not in SUPPORTED_ARCHITECTURES:
            raise ValueError(f"architecture must be one of {sorted(SUPPORTED_ARCHITECTURES)}, got {architecture!r}")
        model_type = SUPPORTED_ARCHITECTURES[architecture]
        if self.position_encoding != "rope":
            raise ValueError(
                f"position_encoding={self.position_encoding!r} cannot be written as a {architecture} config.json "
                "(those models use RoPE); keep such a model in llmbook, or save its state_dict"
            )
        out: dict[str, Any] = dict(self.extra)
        out.update(
            architectures=[architecture],
            model_type=model_type,
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            max_position_embeddings=self.max_position_embeddings,
            rope_theta=self.rope_theta,
            rope_scaling=dict(self.rope_scaling) if self.rope_scaling is not None else None,
            rms_norm_eps=self.rms_norm_eps,
            tie_word_embeddings=self.tie_word_embeddings,
            hidden_act="silu",
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
        )
        if model_type == "qwen2":
            # Qwen2 always has q/k/v bias and never o_proj bias; other combinations cannot be expressed.
            if not (self.attention_bias and not self.attention_output_bias):
                raise ValueError("architecture 'Qwen2ForCausalLM' needs attention_bias=True and attention_output_bias=False")
            out["use_sliding_window"] = False
        else:
            if self.attention_bias != self.attention_output_bias:
                raise ValueError(
                    "architecture 'LlamaForCausalLM' has one attention_bias flag for q/k/v/o; this config has "
                    f"attention_bias={self.attention_bias}, attention_output_bias={self.attention_output_bias} "
                    "(use 'Qwen2ForCausalLM')"
                )
            out["attention_bias"] = self.attention_bias
            out["mlp_bias"] = False
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields (for printing in a chapter)."""
        return asdict(self)


# transformers' GenerationConfig defaults for the settings that change which token is chosen and
# that llmbook.generate does not implement: a generation_config.json may only leave them at these.
_UNSUPPORTED_GENERATION_DEFAULTS: dict[str, Any] = {
    "num_beams": 1, "num_beam_groups": 1, "penalty_alpha": None, "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0,
    "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "top_h": None, "bad_words_ids": None,
    "sequence_bias": None, "suppress_tokens": None, "begin_suppress_tokens": None, "forced_bos_token_id": None,
    "forced_eos_token_id": None, "min_length": 0, "min_new_tokens": None, "exponential_decay_length_penalty": None,
    "diversity_penalty": 0.0, "guidance_scale": None, "renormalize_logits": False, "watermarking_config": None,
}


@dataclass
class GenerationConfig:
    """What a checkpoint's ``generation_config.json`` says about generating (transformers' ``GenerationConfig``).

    ``eos_token_id``: every id that ends a reply (Llama-3-Instruct lists two); ``llmbook.generate``
    always stops at these, at config.json's and at the tokenizer's EOS. The sampling settings
    (``do_sample``, ``temperature``, ``top_k``, ``top_p``, ``min_p``, ``max_new_tokens``) are the
    checkpoint author's recommendation: transformers' ``generate`` uses them as its defaults,
    ``llmbook.generate`` does not (its defaults are its own, the same for every model, so a chapter's
    output does not change with the checkpoint); pass ``**model.generation_config.sampling_kwargs()``
    to use them. ``extra`` keeps the other keys of the file.
    """

    eos_token_id: list[int] = field(default_factory=list)
    bos_token_id: int | None = None
    pad_token_id: int | None = None
    do_sample: bool | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    max_new_tokens: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_hf(cls, hf: dict[str, Any], config: ModelConfig) -> "GenerationConfig":
        """Read a ``generation_config.json`` dict; bos/eos/pad the file leaves out come from ``config`` (config.json)."""
        if not isinstance(hf, dict):
            raise ValueError(f"hf must be a dict parsed from generation_config.json, got {type(hf).__name__}")
        ids = {}
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = hf.get(name, getattr(config, name))
            _optional_token_id(name, value, config.vocab_size)
            ids[name] = value
        eos = ids["eos_token_id"]
        eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        for name, kind in (("do_sample", bool), ("temperature", (int, float)), ("top_k", int), ("top_p", (int, float)),
                           ("min_p", (int, float)), ("max_new_tokens", int)):
            value = hf.get(name)
            if value is not None and (not isinstance(value, kind) or (kind is not bool and isinstance(value, bool))):
                raise ValueError(f"generation_config {name} must be {getattr(kind, '__name__', 'a number')} or null, got {value!r}")
        mine = {"bos_token_id", "eos_token_id", "pad_token_id", "do_sample", "temperature", "top_k", "top_p",
                "min_p", "max_new_tokens"}
        return cls(eos_token_id=eos, bos_token_id=ids["bos_token_id"], pad_token_id=ids["pad_token_id"],
                   **{k: hf.get(k) for k in mine - {"bos_token_id", "eos_token_id", "pad_token_id"}},
                   extra={k: v for k, v in hf.items() if k not in mine})

    def to_hf(self) -> dict[str, Any]:
        """A ``generation_config.json`` dict (keys left unset are left out)."""
        out = dict(self.extra)
        eos = self.eos_token_id[0] if len(self.eos_token_id) == 1 else list(self.eos_token_id) or None
        for key, value in (("bos_token_id", self.bos_token_id), ("eos_token_id", eos), ("pad_token_id", self.pad_token_id),
                           ("do_sample", self.do_sample), ("temperature", self.temperature), ("top_k", self.top_k),
                           ("top_p", self.top_p), ("min_p", self.min_p), ("max_new_tokens", self.max_new_tokens)):
            if value is not None:
                out[key] = value
        return out

    def sampling_kwargs(self) -> dict[str, Any]:
        """The file's sampling settings as ``llmbook.generate`` keyword arguments, read as transformers reads them.

        ``do_sample`` false or unset is greedy (``temperature=0``); otherwise ``temperature``
        (default 1.0), ``top_k`` (transformers' default 50; 0 turns it off), ``top_p`` and ``min_p``.
        ``max_new_tokens`` is included when the file sets it. A setting that changes the choice of
        token and that ``generate`` lacks (``repetition_penalty``, ``num_beams``, ...) raises
        ``ValueError`` naming it, rather than being dropped.
        """
        unsupported = {k: v for k, v in self.extra.items()
                       if k in _UNSUPPORTED_GENERATION_DEFAULTS and v != _UNSUPPORTED_GENERATION_DEFAULTS[k]}
        if unsupported:
            raise ValueError(
                f"generation_config sets {unsupported}, which llmbook.generate does not implement; "
                "pass the sampling arguments yourself"
            )
        out: dict[str, Any] = {}
        if not self.do_sample:
            out["temperature"] = 0.0
        else:
            out["temperature"] = 1.0 if self.temperature is None else float(self.temperature)
            top_k = 50 if self.top_k is None else self.top_k
            out["top_k"] = top_k if top_k > 0 else None
            out["top_p"] = None if self.top_p is None or self.top_p >= 1.0 else float(self.top_p)
            out["min_p"] = None if not self.min_p else float(self.min_p)
        if self.max_new_tokens is not None:
            out["max_new_tokens"] = self.max_new_tokens
        return out


# ====================================================================== building blocks
class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight, computed in float32 (as Llama does) and cast back."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., D) -> (..., D)
        dtype = x.dtype
        x32 = x.float()  # the mean of squares overflows/underflows in half precision
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


def default_inverse_frequencies(head_dim: int, base: float, device: torch.device | str | None = None) -> torch.Tensor:
    """RoPE's theta_i = base^(-2i/d) for i < d/2 (Su et al. 2021), float32, shape (d/2,).

    Computed as transformers computes it (integer exponents, then float), so the angles match its
    Llama implementation bit for bit.
    """
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim))


def rope_inverse_frequencies(config: ModelConfig, device: torch.device | str | None = None) -> torch.Tensor:
    """theta_i = base^(-2i/d) for i < d/2, with Llama-3 scaling of the low frequencies when configured."""
    inv_freq = default_inverse_frequencies(config.head_dim, config.rope_theta, device)
    if config.rope_type != "llama3":
        return inv_freq
    s = config.rope_scaling
    factor, low, high = float(s["factor"]), float(s["low_freq_factor"]), float(s["high_freq_factor"])
    old_context = float(s["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths (longer than the original context / low) are slowed down by `factor`: the model
    # never saw a full period of them, so stretching them extends the context. Short ones are kept,
    # and the band in between is interpolated smoothly.
    scaled = torch.where(wavelen > old_context / low, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < old_context / high) & ~(wavelen > old_context / low)
    return torch.where(is_medium, smoothed, scaled)


def rotary_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the angles position * theta_i, float32, each of shape (T, d) for positions (T,).

    Each angle appears twice, for x_i and x_{i+d/2} (the pairing of :func:`rotate_half`).
    """
    freqs = torch.outer(positions.to(torch.float32), inv_freq.float())  # (T, d/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (T, d)
    return emb.cos(), emb.sin()


class RotaryEmbedding(nn.Module):
    """Cos/sin tables for rotary position embedding, computed once and grown on demand.

    Position p rotates the pair (x_i, x_{i+d/2}) by the angle p * theta_i. The table for
    positions [0, n) is kept in float32 and sliced per forward pass, so nothing is recomputed per step.
    """

    def __init__(self, config: ModelConfig, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("inv_freq", rope_inverse_frequencies(config, device), persistent=False)
        self._cos: torch.Tensor | None = None  # (n, d) float32
        self._sin: torch.Tensor | None = None

    def reset(self, device: torch.device | str) -> None:
        """Recompute the frequencies on ``device`` (after building the model on the meta device)."""
        self.inv_freq = rope_inverse_frequencies(self.config, device)
        self._cos = self._sin = None

    def _apply(self, fn, recurse=True):  # noqa: ANN001 - torch's internal hook behind .to()/.cuda()/.half()
        # model.to(bfloat16) would round the frequencies to 8 bits of mantissa and ruin positions
        # far into the context; follow device moves only and recompute them in float32.
        super()._apply(fn, recurse)
        if self.inv_freq.device.type != "meta":
            self.reset(self.inv_freq.device)
        return self

    def _table(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cos is None or self._cos.shape[0] < length or self._cos.device != self.inv_freq.device:
            # Grow to the next power of two (capped by the model's context) so a generation loop builds
            # the table a handful of times at most.
            n = min(max(64, 1 << (length - 1).bit_length()), self.config.max_position_embeddings)
            n = max(n, length)
            positions = torch.arange(n, device=self.inv_freq.device, dtype=torch.float32)
            self._cos, self._sin = rotary_cos_sin(positions, self.inv_freq)
        return self._cos, self._sin

    def forward(self, position_ids: torch.Tensor | None, start: int, length: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Cos and sin for the new tokens: (1, 1, T, d) for positions start..start+T-1, or (B, 1, T, d) per row."""
        if position_ids is None:
            cos, sin = self._table(start + length)
            cos, sin = cos[start:start + length], sin[start:start + length]
            return cos.to(dtype)[None, None], sin.to(dtype)[None, None]
        cos, sin = self._table(int(position_ids.max()) + 1)
        return cos[position_ids].to(dtype)[:, None], sin[position_ids].to(dtype)[:, None]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair of x (B, heads, T, d) by its position's angle."""
    return x * cos + rotate_half(x) * sin


class KVCache:
    """Keys and values of every layer for the tokens seen so far, preallocated for ``max_length`` tokens.

    ``keys[layer]`` and ``values[layer]`` are (B, K, max_length, d); slots ``[0, length)`` are filled.
    With left padding, ``mask`` (B, max_length) marks which filled slots hold real tokens, and
    ``next_position`` (B,) counts each row's real tokens, i.e. the RoPE position of its next token.
    Appending T tokens costs O(T), so incremental decoding never recomputes the prefix.
    """

    def __init__(self, config: ModelConfig, batch_size: int, max_length: int,
                 device: torch.device | str, dtype: torch.dtype, *, allow_extrapolation: bool = False) -> None:
        _positive_int("batch_size", batch_size)
        _positive_int("max_length", max_length)
        if not isinstance(allow_extrapolation, bool):
            raise ValueError(f"allow_extrapolation must be True or False, got {allow_extrapolation!r}")
        if max_length > config.max_position_embeddings and not allow_extrapolation:
            raise ValueError(f"max_length must be in [1, {config.max_position_embeddings}] (max_position_embeddings), "
                             f"got {max_length}; pass allow_extrapolation=True to go past the trained context")
        # The opt-in travels with the cache: every pass that writes into it may use its positions.
        self.allow_extrapolation = allow_extrapolation
        shape = (config.num_hidden_layers, batch_size, config.num_key_value_heads, max_length, config.head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.mask = torch.zeros(batch_size, max_length, device=device, dtype=torch.bool)
        self.next_position = torch.zeros(batch_size, device=device, dtype=torch.long)
        self.batch_size = batch_size
        self.max_length = max_length
        self.length = 0
        self.has_padding = False  # True once a masked (padding) slot was written: masks are then needed

    @property
    def device(self) -> torch.device:
        return self.keys.device

    @property
    def dtype(self) -> torch.dtype:
        return self.keys.dtype

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new (B, K, T, d) keys/values after the filled slots; return all (B, K, S, d) so far."""
        end = self.length + k.shape[2]
        self.keys[layer, :, :, self.length:end] = k
        self.values[layer, :, :, self.length:end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def advance(self, t: int, mask: torch.Tensor | None = None) -> None:
        """Mark T new slots as filled; ``mask`` (B, T) is True for real tokens (None: all real). Once per forward pass."""
        if mask is None:
            self.mask[:, self.length:self.length + t] = True
            self.next_position += t
        else:
            self.mask[:, self.length:self.length + t] = mask
            self.next_position += mask.sum(dim=1)
            if not self.has_padding and not bool(mask.all()):
                self.has_padding = True
        self.length += t

    def truncate(self, length: int) -> None:
        """Forget every slot from ``length`` on (e.g. rejected draft tokens in speculative decoding)."""
        if isinstance(length, bool) or not isinstance(length, int) or not 0 <= length <= self.length:
            raise ValueError(f"length must be an integer in [0, {self.length}], got {length!r}")
        self.mask[:, length:] = False
        self.length = length
        self.next_position = self.mask[:, :length].sum(dim=1)
        self.has_padding = not bool(self.mask[:, :length].all())

    def reset(self) -> None:
        """Empty the cache, keeping its memory."""
        self.truncate(0)

    def __repr__(self) -> str:
        return (f"KVCache(batch_size={self.batch_size}, length={self.length}/{self.max_length}, "
                f"layers={self.keys.shape[0]}, kv_heads={self.keys.shape[2]}, head_dim={self.keys.shape[4]}, "
                f"dtype={self.dtype}, device={self.device})")


class Attention(nn.Module):
    """Causal grouped-query self-attention: H query heads share K key/value heads (H/K queries per group)."""

    def __init__(self, config: ModelConfig, layer_index: int) -> None:
        super().__init__()
        self.layer_index = layer_index
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        d, h, k = config.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.q_proj = nn.Linear(d, h, bias=config.attention_bias)
        self.k_proj = nn.Linear(d, k, bias=config.attention_bias)
        self.v_proj = nn.Linear(d, k, bias=config.attention_bias)
        self.o_proj = nn.Linear(h, d, bias=config.attention_output_bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None, is_causal: bool, cache: KVCache | None) -> torch.Tensor:
        b, t, _ = x.shape  # (B, T, D)
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, d)
        k = self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, K, T, d)
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, K, T, d)
        if cos is not None:  # RoPE; the other position encodings act on the embedding or the mask
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_index, k, v)  # (B, K, S, d)
        # Each key/value head serves H/K query heads: query head h reads key/value head h // (H/K).
        gqa = self.num_kv_heads != self.num_heads
        if gqa and not _SDPA_HAS_GQA:  # torch < 2.5: materialize the repeated heads
            groups = self.num_heads // self.num_kv_heads
            k = k.repeat_interleave(groups, dim=1)  # (B, H, S, d)
            v = v.repeat_interleave(groups, dim=1)
            gqa = False
        # softmax(q k^T / sqrt(d) + mask) v, fused; `mask` is boolean (True = may attend), (B, 1, T, S),
        # or with ALiBi a float bias, -inf where a key may not be attended, (B, H, T, S).
        extra = {"enable_gqa": True} if gqa else {}  # the kernel indexes the shared head, no copy
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, **extra)  # (B, H, T, d)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim))  # (B, T, D)


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x)), D -> I -> D."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: ModelConfig, layer_index: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_index)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None, is_causal: bool, cache: KVCache | None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, is_causal, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    """Embedding, the stack of decoder layers and the final norm (Hugging Face's ``model.*``)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)
        if config.position_encoding == "learned":  # one trained vector per absolute position (GPT-2's wpe)
            self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        if config.position_encoding == "alibi":
            self.register_buffer("alibi_slopes", torch.tensor(alibi_slopes(config.num_attention_heads)),
                                 persistent=False)


def alibi_slopes(num_heads: int) -> list[float]:
    """ALiBi's head slopes m_h (Press, Smith and Lewis 2022, "Train Short, Test Long", section 3).

    For n heads, a power of two: the geometric sequence m_h = 2^(-8h/n), h = 1..n. Otherwise the
    slopes of the nearest smaller power of two, then every other slope of the next larger one,
    as in the paper's reference code (and transformers' Bloom). Head h adds -m_h (i - j) to the
    logit of query i for key j: steep heads look locally, shallow ones far.
    """
    _positive_int("num_heads", num_heads)

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (h + 1) for h in range(n)]

    if num_heads & (num_heads - 1) == 0:
        return power_of_two(num_heads)
    closest = 1 << (num_heads.bit_length() - 1)
    return power_of_two(closest) + alibi_slopes(2 * closest)[0::2][: num_heads - closest]


def alibi_bias(slopes: torch.Tensor, query_positions: torch.Tensor, key_positions: torch.Tensor,
                allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Float mask (B or 1, H, T, S): -m_h (i - j) where query i may attend key j, -inf elsewhere.

    ``query_positions`` (B or 1, T) and ``key_positions`` (B or 1, S) are positions in the
    sequence (counting real tokens only); ``allowed`` (B or 1, 1, T, S) is the boolean mask.
    """
    distance = (query_positions[:, None, :, None] - key_positions[:, None, None, :]).to(torch.float32)  # (B, 1, T, S)
    bias = -slopes.to(torch.float32)[None, :, None, None] * distance  # (B, H, T, S)
    return bias.masked_fill(~allowed, float("-inf")).to(dtype)


def _attention_mask(attended: torch.Tensor | None, start: int, t: int, device: torch.device) -> torch.Tensor:
    """Boolean (B or 1, 1, T, S) mask: query at position start+i may see key j <= start+i that is a real token.

    A padding query would see no key at all, and softmax over nothing is NaN, which then leaks
    into later layers through 0 * NaN. So every query may always see itself; real queries never
    attend to padding because a padding slot is only ever its own diagonal.
    """
    s = start + t
    query = torch.arange(start, s, device=device)[:, None]  # (T, 1)
    key = torch.arange(s, device=device)[None, :]  # (1, S)
    allowed = key <= query  # (T, S) causal
    if attended is None:
        return allowed[None, None]
    return ((allowed & attended[:, None, :]) | (key == query))[:, None]  # (B, 1, T, S)


class CausalLM(nn.Module):
    """The language model: token ids (B, T) -> next-token logits (B, T, V).

    ``model(ids)`` runs the whole sequence. For incremental decoding pass a cache from
    :meth:`new_cache`: each call appends its tokens to the cache and costs O(new tokens).
    ``attention_mask`` (B, T), 1 for real tokens and 0 for (left) padding, lets prompts of
    different lengths share a batch; positions then count real tokens only, so each row gets the
    same logits as when run alone.
    """

    def __init__(self, config: ModelConfig, device: torch.device | str | None = None,
                 dtype: torch.dtype | str | None = None) -> None:
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise ValueError(f"config must be a ModelConfig, got {type(config).__name__}")
        config.validate()
        device = torch.device(device) if device is not None else torch.device("cpu")
        dtype = resolve_dtype(dtype, device if device.type != "meta" else None)
        self.config = config
        # What generation_config.json says (llmbook.hub.load_model reads it); None: nothing beyond config.json.
        self.generation_config: GenerationConfig | None = None
        with torch.device(device):
            self.model = Decoder(config)
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight  # one matrix reads tokens in and writes them out
        # Recompute each decoder layer in the backward pass instead of keeping what it saves
        # (Chen et al. 2016, "Training deep nets with sublinear memory cost"): only each layer's
        # input is kept, one layer's activations are rebuilt at a time, at about one extra forward.
        self.gradient_checkpointing = False
        if device.type != "meta":
            self.reset_parameters()
        self.to(dtype)

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02) -> None:
        """Random init as in Llama: normal(0, std) weights, zero biases, unit norm gains."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0.0, std)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
            elif isinstance(module, RMSNorm):
                module.weight.fill_(1.0)

    @property
    def device(self) -> torch.device:
        # The embedding, not the output layer: quantization (e.g. torch's dynamic int8)
        # replaces nn.Linear weights by packed tensors, while the embedding stays a tensor.
        return self.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the activations and of the KV cache: the embedding's."""
        return self.model.embed_tokens.weight.dtype

    def new_cache(self, batch_size: int = 1, max_length: int | None = None, *,
                  allow_extrapolation: bool = False) -> KVCache:
        """An empty KV cache for ``batch_size`` rows of up to ``max_length`` tokens (default: the model's context).

        ``allow_extrapolation``: accept a ``max_length`` past ``max_position_embeddings`` (see
        :meth:`forward`); the passes that write into this cache may then use those positions
        without repeating the opt-in.
        """
        max_length = self.config.max_position_embeddings if max_length is None else max_length
        return KVCache(self.config, batch_size, max_length, self.device, self.dtype,
                       allow_extrapolation=allow_extrapolation)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Number of parameters (a tied embedding counts once)."""
        return count_parameters(self, exclude_embeddings=exclude_embeddings)

    def _check_inputs(self, input_ids: torch.Tensor, cache: KVCache | None,
                      attention_mask: torch.Tensor | None, allow_extrapolation: bool = False) -> None:
        if not isinstance(input_ids, torch.Tensor):
            raise ValueError(f"input_ids must be a torch.Tensor of token ids, got {type(input_ids).__name__}")
        if input_ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
            raise ValueError(f"input_ids must have an integer dtype (token ids), got {input_ids.dtype}")
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must have shape (batch, time), got shape {tuple(input_ids.shape)}")
        b, t = input_ids.shape
        if b == 0 or t == 0:
            raise ValueError(f"input_ids must be non-empty, got shape {tuple(input_ids.shape)}")
        if input_ids.device != self.device:
            raise ValueError(f"input_ids is on {input_ids.device} but the model is on {self.device}; move one of them")
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= self.config.vocab_size:
            raise ValueError(f"input_ids must be token ids in [0, {self.config.vocab_size - 1}], got values in [{lo}, {hi}]")
        if cache is not None and not isinstance(cache, KVCache):
            raise ValueError(f"cache must be a KVCache (see CausalLM.new_cache), got {type(cache).__name__}")
        past = 0 if cache is None else cache.length
        if not isinstance(allow_extrapolation, bool):
            raise ValueError(f"allow_extrapolation must be True or False, got {allow_extrapolation!r}")
        if past + t > self.config.max_position_embeddings and self.config.position_encoding == "learned":
            raise ValueError(
                f"sequence too long: {past} cached + {t} new = {past + t} tokens exceeds "
                f"max_position_embeddings={self.config.max_position_embeddings}, and learned absolute positions "
                "have no embedding beyond it (allow_extrapolation cannot help)"
            )
        if cache is not None and cache.allow_extrapolation:
            allow_extrapolation = True  # opted in when the cache was made for these positions
        if past + t > self.config.max_position_embeddings and not allow_extrapolation:
            raise ValueError(
                f"sequence too long: {past} cached + {t} new = {past + t} tokens exceeds "
                f"max_position_embeddings={self.config.max_position_embeddings}; pass allow_extrapolation=True "
                f"to run positions the model was never trained on"
            )
        if cache is not None:
            if cache.batch_size != b:
                raise ValueError(f"cache was made for batch_size={cache.batch_size}, input_ids has batch {b}")
            if past + t > cache.max_length:
                raise ValueError(f"cache holds max_length={cache.max_length} tokens; cannot append {t} to its {past}")
            if cache.device != self.device or cache.dtype != self.dtype:
                raise ValueError(f"cache is {cache.dtype} on {cache.device}, the model is {self.dtype} on {self.device}")
        if attention_mask is not None:
            if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
                shape = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
                raise ValueError(f"attention_mask must be a tensor of shape {tuple(input_ids.shape)} like input_ids, got {shape}")
            if attention_mask.device != self.device:
                raise ValueError(f"attention_mask is on {attention_mask.device} but the model is on {self.device}")
            if attention_mask.dtype != torch.bool and not ((attention_mask == 0) | (attention_mask == 1)).all():
                raise ValueError("attention_mask must contain only 0 (padding) and 1 (real token)")

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None,
                attention_mask: torch.Tensor | None = None, *, last_only: bool = False,
                allow_extrapolation: bool = False) -> torch.Tensor:
        """Logits (B, T, V) for token ids (B, T); with ``last_only`` just (B, 1, V) for the last position.

        ``cache`` (from :meth:`new_cache`) receives the new keys/values and supplies the earlier ones.
        Positions past ``max_position_embeddings`` are refused unless ``allow_extrapolation`` is True
        (here or when ``cache`` was made):
        RoPE computes their angles like any others, but the model never saw them in training, which
        is what extrapolation experiments measure.
        """
        self._check_inputs(input_ids, cache, attention_mask, allow_extrapolation)
        b, t = input_ids.shape
        start = 0 if cache is None else cache.length
        real = None if attention_mask is None else attention_mask.to(torch.bool)  # (B, T)
        padded = (real is not None and not bool(real.all())) or (cache is not None and cache.has_padding)

        if padded:
            # Positions count real tokens only, so a left-padded prompt gets the positions it has alone.
            if real is None:
                real = torch.ones(b, t, dtype=torch.bool, device=input_ids.device)
            before = cache.next_position[:, None] if cache is not None else 0
            position_ids = (before + real.long().cumsum(dim=1) - 1).masked_fill(~real, 0)  # (B, T)
            attended = real if cache is None else torch.cat([cache.mask[:, :start], real], dim=1)  # (B, S)
            mask, is_causal = _attention_mask(attended, start, t, input_ids.device), False
        else:
            position_ids = None  # the same positions start..start+T-1 for every row
            if start == 0:
                mask, is_causal = None, t > 1
            elif t == 1:
                mask, is_causal = None, False  # one new token sees every cached one
            else:
                mask, is_causal = _attention_mask(None, start, t, input_ids.device), False

        x = self.model.embed_tokens(input_ids)  # (B, T, D)
        cos = sin = None
        encoding = self.config.position_encoding
        if encoding == "rope":
            cos, sin = self.model.rotary_emb(position_ids, start, t, x.dtype)
        elif encoding in ("learned", "alibi"):
            positions = position_ids if padded else torch.arange(start, start + t, device=x.device)[None]  # (B or 1, T)
            if encoding == "learned":
                x = x + self.model.embed_positions(positions)
            else:
                if padded:  # a key's position counts the real tokens before it, like a query's
                    key_positions = attended.long().cumsum(dim=1) - 1  # (B, S)
                else:
                    key_positions = torch.arange(start + t, device=x.device)[None]  # (1, S)
                allowed = mask if mask is not None else _attention_mask(None, start, t, x.device)
                mask = alibi_bias(self.model.alibi_slopes, positions, key_positions, allowed, x.dtype)
                is_causal = False
        checkpointed = self.gradient_checkpointing and self.training and torch.is_grad_enabled() and cache is None
        for layer in self.model.layers:
            if checkpointed:
                # Non-reentrant: the recomputed forward sees the same RNG and autocast state,
                # and frozen (LoRA) layers still get their inputs' gradients.
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, mask, is_causal, None, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, is_causal, cache)
        if cache is not None:
            cache.advance(t, real)
        if last_only:
            x = x[:, -1:]
        return self.lm_head(self.model.norm(x))  # (B, T, V)


def count_parameters(module: nn.Module, exclude_embeddings: bool = False) -> int:
    """Number of distinct parameters of ``module`` (shared/tied tensors count once).

    ``exclude_embeddings`` leaves out the token embedding (and the output head when tied to it),
    the convention for quoting "non-embedding parameters".
    """
    if not isinstance(module, nn.Module):
        raise ValueError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    skip: set[int] = set()
    if exclude_embeddings:
        skip = {id(m.weight) for m in module.modules() if isinstance(m, nn.Embedding)}
    return sum(p.numel() for p in module.parameters() if id(p) not in skip)
