"""How much memory training a model takes: the training state, term by term, with its formula.

The chapter *Fine-tuning memory* (planned, issue 15) explains this module. This part counts the
*training state*: everything a training step keeps between steps, whatever the batch is.

- **Weights**: every parameter of the model, in ``param_dtype`` (for QLoRA the frozen base weights
  in 4-bit NF4 with double-quantized block constants, Dettmers et al. 2023, "QLoRA: efficient
  finetuning of quantized LLMs", NeurIPS: 4 + 0.127 bits per weight).
- **Gradients**: one per *trainable* parameter, in ``grad_dtype`` (default: ``param_dtype``).
- **Master weights**: an fp32 copy of the trainable parameters when they are stored in 16 bits
  (mixed-precision training, Micikevicius et al. 2018, "Mixed precision training", ICLR).
- **Optimizer states**: AdamW keeps two fp32 moments per trainable parameter (8 bytes);
  8-bit AdamW keeps them in int8 with one fp32 scale per block of 2,048 values (Dettmers et al.
  2022, "8-bit optimizers via block-wise quantization", ICLR); plain SGD keeps nothing.

Mixed-precision AdamW is therefore 2 + 2 + 4 + 8 = 16 bytes per parameter before any activation
(Rajbhandari et al. 2020, "ZeRO: memory optimizations toward training trillion parameter
models", SC20, section 3.1). LoRA (Hu et al. 2021, "LoRA: low-rank adaptation of large language
models", ICLR 2022) freezes the base weights and trains r (d_in + d_out) values per adapted
matrix. Activations, logits and temporary buffers depend on the batch and are not counted here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llmbook.model import ModelConfig

__all__ = ["MemoryTerm", "TrainingState", "parameter_counts", "lora_parameter_count", "training_state",
           "LORA_TARGETS"]

#: Bytes per value of the floating-point formats this module accounts for.
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
#: The linear layers of a Llama-family decoder layer that LoRA can adapt.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: QLoRA's NF4 weights with double quantization: 4 bits plus 0.127 bits of block constants
#: (Dettmers et al. 2023, section 3: 8-bit constants per 64 weights, fp32 per 256 of those).
NF4_BITS_PER_WEIGHT = 4 + 8 / 64 + 32 / (64 * 256)
#: Block size of 8-bit optimizer states (Dettmers et al. 2022): one fp32 absmax per block.
OPTIMIZER_8BIT_BLOCK = 2048


@dataclass(frozen=True)
class MemoryTerm:
    """One term of a memory estimate: ``bytes`` and the ``formula`` and ``source`` that give it."""

    name: str
    bytes: int
    formula: str
    source: str


@dataclass(frozen=True)
class TrainingState:
    """The training state's terms; ``total`` is their sum in bytes."""

    terms: tuple[MemoryTerm, ...]
    parameters: int
    trainable: int

    @property
    def total(self) -> int:
        return sum(t.bytes for t in self.terms)

    def __str__(self) -> str:
        rows = [f"{t.name:>17}: {t.bytes / 1e9:8.3f} GB  ({t.formula})" for t in self.terms]
        rows.append(f"{'total':>17}: {self.total / 1e9:8.3f} GB")
        return "\n".join(rows)


def _linear_shapes(c: ModelConfig) -> dict[str, tuple[int, int]]:
    """(d_in, d_out) of each linear layer in one decoder layer."""
    d, h, k, hd, i = c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.intermediate_size
    return {"q_proj": (d, h * hd), "k_proj": (d, k * hd), "v_proj": (d, k * hd), "o_proj": (h * hd, d),
            "gate_proj": (d, i), "up_proj": (d, i), "down_proj": (i, d)}


def _check_config(config: object) -> ModelConfig:
    if isinstance(config, dict):  # a parsed Hugging Face config.json: from_hf refuses what it cannot build
        return ModelConfig.from_hf(config)
    if not isinstance(config, ModelConfig):
        raise ValueError(f"config must be a ModelConfig or a config.json dict, got {type(config).__name__}")
    return config


def parameter_counts(config: ModelConfig | dict) -> dict[str, int]:
    """Parameters of the model by part: ``embedding``, ``attention`` (with its biases), ``mlp``,
    ``norms`` and ``output`` (0 when tied to the embedding). Equal to ``sum(p.numel())`` of the
    built :class:`llmbook.model.CausalLM` (tested)."""
    c = _check_config(config)
    shapes = _linear_shapes(c)
    attention = sum(a * b for name, (a, b) in shapes.items() if name.endswith(("q_proj", "k_proj", "v_proj", "o_proj")))
    if c.attention_bias:
        attention += shapes["q_proj"][1] + shapes["k_proj"][1] + shapes["v_proj"][1]
    if c.attention_output_bias:
        attention += shapes["o_proj"][1]
    mlp = sum(a * b for name in ("gate_proj", "up_proj", "down_proj") for a, b in [shapes[name]])
    layers = c.num_hidden_layers
    return {
        "embedding": c.vocab_size * c.hidden_size,
        "attention": layers * attention,
        "mlp": layers * mlp,
        "norms": (2 * layers + 1) * c.hidden_size,
        "output": 0 if c.tie_word_embeddings else c.vocab_size * c.hidden_size,
    }


def lora_parameter_count(config: ModelConfig | dict, rank: int, targets: Sequence[str] = ("q_proj", "v_proj")) -> int:
    """Trainable values of LoRA adapters of rank ``rank`` on ``targets`` in every layer:
    r (d_in + d_out) per adapted matrix (A is r x d_in, B is d_out x r; Hu et al. 2021).

    Raises ``ValueError`` for an unknown target, a repeated one, or a rank outside
    [1, min(d_in, d_out)] of some target (a larger rank cannot raise the update's rank).
    """
    c = _check_config(config)
    shapes = _linear_shapes(c)
    if isinstance(targets, str) or not isinstance(targets, Sequence) or not targets:
        raise ValueError(f"targets must be a non-empty list of layer names from {list(LORA_TARGETS)}")
    unknown = [t for t in targets if t not in shapes]
    if unknown:
        raise ValueError(f"unknown LoRA target(s) {unknown}; a Llama-family layer has {list(LORA_TARGETS)}")
    if len(set(targets)) != len(targets):
        raise ValueError(f"targets repeat a layer: {list(targets)}")
    limit = min(min(shapes[t]) for t in targets)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= limit:
        raise ValueError(f"rank must be an integer in [1, {limit}] (the smallest side of the targeted "
                         f"matrices), got {rank!r}")
    return c.num_hidden_layers * sum(rank * (shapes[t][0] + shapes[t][1]) for t in targets)


def _dtype_bytes(name: str, value: object) -> int:
    if value not in DTYPE_BYTES:
        raise ValueError(f"{name} must be one of {sorted(DTYPE_BYTES)}, got {value!r}")
    return DTYPE_BYTES[value]


def training_state(
    config: ModelConfig | dict,
    *,
    method: str = "full",
    param_dtype: str = "float32",
    grad_dtype: str | None = None,
    optimizer: str = "adamw",
    master_weights: bool = False,
    lora_rank: int | None = None,
    lora_targets: Sequence[str] = ("q_proj", "v_proj"),
) -> TrainingState:
    """The memory a training step keeps between steps, term by term (see the module docstring).

    Args:
        method: ``"full"`` (every parameter trains), ``"lora"`` (frozen base in ``param_dtype``,
            adapters train) or ``"qlora"`` (frozen base in 4-bit NF4, adapters train).
        param_dtype: the stored dtype of the weights (and of the adapters), ``"float32"``,
            ``"bfloat16"`` or ``"float16"``.
        grad_dtype: the gradients' dtype (default ``param_dtype``).
        optimizer: ``"adamw"`` (two fp32 moments), ``"adamw8bit"`` (two int8 moments, block-wise
            scales) or ``"sgd"`` (no state).
        master_weights: keep an fp32 copy of the trainable parameters (mixed precision); refused
            with fp32 parameters, where it would be a second identical copy.
        lora_rank, lora_targets: the adapters (required for ``"lora"``/``"qlora"``, refused otherwise).
    Returns a :class:`TrainingState`; raises ``ValueError`` naming any argument out of range.
    """
    c = _check_config(config)
    if method not in ("full", "lora", "qlora"):
        raise ValueError(f"method must be 'full', 'lora' or 'qlora', got {method!r}")
    p_bytes = _dtype_bytes("param_dtype", param_dtype)
    g_bytes = p_bytes if grad_dtype is None else _dtype_bytes("grad_dtype", grad_dtype)
    if optimizer not in ("adamw", "adamw8bit", "sgd"):
        raise ValueError(f"optimizer must be 'adamw', 'adamw8bit' or 'sgd', got {optimizer!r}")
    if not isinstance(master_weights, bool):
        raise ValueError(f"master_weights must be True or False, got {master_weights!r}")
    if master_weights and param_dtype == "float32":
        raise ValueError("master_weights=True needs 16-bit parameters: with float32 parameters the master "
                         "copy would duplicate them")
    parameters = sum(parameter_counts(c).values())
    if method == "full":
        if lora_rank is not None:
            raise ValueError("lora_rank is only for method='lora' or 'qlora'")
        trainable = parameters
    else:
        if lora_rank is None:
            raise ValueError(f"method={method!r} needs lora_rank")
        trainable = lora_parameter_count(c, lora_rank, lora_targets)

    terms = []
    if method == "qlora":
        base = parameters
        terms.append(MemoryTerm("weights", round(base * NF4_BITS_PER_WEIGHT / 8) + trainable * p_bytes,
                                f"{base:,} frozen x {NF4_BITS_PER_WEIGHT:.3f} bits + {trainable:,} adapter x "
                                f"{p_bytes} B", "Dettmers et al. 2023 (QLoRA), NF4 with double quantization"))
    else:
        total_params = parameters + (trainable if method == "lora" else 0)
        terms.append(MemoryTerm("weights", total_params * p_bytes, f"{total_params:,} x {p_bytes} B ({param_dtype})",
                                "one value per parameter"))
    terms.append(MemoryTerm("gradients", trainable * g_bytes, f"{trainable:,} trainable x {g_bytes} B",
                            "one gradient per trainable parameter"))
    if master_weights:
        terms.append(MemoryTerm("master weights", trainable * 4, f"{trainable:,} trainable x 4 B (float32)",
                                "Micikevicius et al. 2018 (mixed precision)"))
    if optimizer == "adamw":
        terms.append(MemoryTerm("optimizer states", trainable * 8, f"{trainable:,} trainable x 2 moments x 4 B",
                                "Loshchilov and Hutter 2019 (AdamW); Rajbhandari et al. 2020"))
    elif optimizer == "adamw8bit":
        blocks = -(-trainable // OPTIMIZER_8BIT_BLOCK)
        terms.append(MemoryTerm("optimizer states", 2 * (trainable + 4 * blocks),
                                f"2 moments x ({trainable:,} x 1 B + {blocks:,} blocks x 4 B)",
                                "Dettmers et al. 2022 (8-bit optimizers, blocks of 2,048)"))
    else:
        terms.append(MemoryTerm("optimizer states", 0, "none (plain SGD, no momentum)", "SGD keeps no state"))
    return TrainingState(terms=tuple(terms), parameters=parameters, trainable=trainable)
