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
matrix.

The second part counts **activations**, which depend on the batch: what autograd saves for the
backward pass, measured from one layer's actual saved tensors (:func:`saved_per_token`,
:func:`activation_memory`). Temporary buffers of the backward pass are not counted yet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llmbook.model import ModelConfig

__all__ = ["MemoryTerm", "TrainingState", "parameter_counts", "lora_parameter_count", "training_state",
           "LORA_TARGETS", "SavedPerToken", "saved_per_token", "activation_memory"]

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


# -- activations: what autograd saves for the backward pass -------------------------------------
#
# Counted, not modelled: one decoder layer and the output head of the configured shapes are run on
# a few tokens under ``torch.autograd.graph.saved_tensors_hooks`` and every tensor autograd keeps is
# added up once per storage (parameters excluded). Doing it at two token counts separates what grows
# with the tokens (the slope) from what does not (RoPE's cos/sin table). A formula written by hand
# for the same layer (Korthikanti et al. 2022, "Reducing activation recomputation in large
# transformer models", section 4, for GPT-style layers) goes stale as soon as a kernel changes what
# it saves, e.g. fused attention keeping q, k, v, the output and a log-sum-exp instead of the
# T x T probability matrix; the count cannot.


@dataclass(frozen=True)
class SavedPerToken:
    """Bytes autograd saves per token: ``layer`` for one decoder layer, ``head`` for the final norm,
    the output layer and a float32 cross-entropy, ``ids`` for the embedding's saved token ids, and
    ``layer_constant`` that one layer saves whatever the token count (RoPE's cos/sin)."""

    layer: int
    head: int
    ids: int
    layer_constant: int
    dtype: str


def _saved_bytes(run, exclude: set[int]) -> int:
    """Bytes of the distinct storages autograd saves while ``run()`` builds its graph."""
    import torch

    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in exclude:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run()
    return sum(storages.values())


def saved_per_token(config: ModelConfig | dict, dtype: str = "float32", tokens: tuple[int, int] = (16, 32)
                    ) -> SavedPerToken:
    """Measure :class:`SavedPerToken` for ``config`` in ``dtype`` on this machine's CPU kernels.

    Builds one decoder layer and the head with uninitialised weights (``to_empty``: sizes, not
    values, decide what is saved) and runs them, with every parameter trainable, at the two
    ``tokens`` counts of one row; the difference divided by the token difference is the per-token
    cost. The attention runs causally without a mask (as training does), so PyTorch's fused kernel
    saves O(T) per head, not a T x T matrix.
    """
    import torch
    import torch.nn.functional as F

    from llmbook.model import DecoderLayer, RMSNorm, RotaryEmbedding

    c = _check_config(config)
    size = _dtype_bytes("dtype", dtype)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    if (not isinstance(tokens, tuple) or len(tokens) != 2 or any(isinstance(t, bool) or not isinstance(t, int)
                                                                  for t in tokens) or not 2 <= tokens[0] < tokens[1]):
        raise ValueError(f"tokens must be two integers 2 <= t1 < t2, got {tokens!r}")
    layer = DecoderLayer(c, 0).to(device="meta").to_empty(device="cpu").to(torch_dtype)
    norm = RMSNorm(c.hidden_size, c.rms_norm_eps).to(torch_dtype)
    head = torch.nn.Linear(c.hidden_size, c.vocab_size, bias=False, device="meta").to_empty(device="cpu")
    head = head.to(torch_dtype)
    for module in (layer, norm, head):  # uninitialised memory may hold NaN or inf: sizes only matter,
        for p in module.parameters():  # but keep the kernels on their ordinary paths
            with torch.no_grad():
                p.uniform_(-0.01, 0.01)
    rotary = RotaryEmbedding(c)
    exclude = {p.untyped_storage().data_ptr() for m in (layer, norm, head) for p in m.parameters()}

    def layer_bytes(t: int) -> int:
        x = torch.randn(1, t, c.hidden_size, dtype=torch_dtype, requires_grad=True)
        cos, sin = rotary(None, 0, t, torch_dtype)
        return _saved_bytes(lambda: layer(x, cos, sin, None, True, None), exclude)

    def head_bytes(t: int) -> int:
        x = torch.randn(1, t, c.hidden_size, dtype=torch_dtype, requires_grad=True)
        targets = torch.randint(0, c.vocab_size, (t,))
        return _saved_bytes(lambda: F.cross_entropy(head(norm(x)).float().flatten(0, 1), targets), exclude)

    t1, t2 = tokens
    l1, l2 = layer_bytes(t1), layer_bytes(t2)
    h1, h2 = head_bytes(t1), head_bytes(t2)
    per_layer = (l2 - l1) // (t2 - t1)
    # One (B, T) int64 tensor of ids is saved by the embedding's backward.
    return SavedPerToken(layer=per_layer, head=(h2 - h1) // (t2 - t1), ids=8,
                         layer_constant=l1 - per_layer * t1, dtype=dtype)


def activation_memory(config: ModelConfig | dict, *, batch_size: int, seq_len: int, dtype: str = "float32",
                      saved: SavedPerToken | None = None) -> tuple[MemoryTerm, ...]:
    """What one training step's forward pass keeps for its backward pass, for ``batch_size`` rows of
    ``seq_len`` tokens: the decoder layers' saved tensors, the head's (final norm, output layer,
    float32 log-softmax) and the token ids, from :func:`saved_per_token` (measured here unless
    ``saved`` is given). No gradient checkpointing: llmbook's training loop does not use it."""
    c = _check_config(config)
    for name, value in (("batch_size", batch_size), ("seq_len", seq_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if seq_len > c.max_position_embeddings:
        raise ValueError(f"seq_len ({seq_len}) exceeds the model's context ({c.max_position_embeddings})")
    s = saved_per_token(c, dtype) if saved is None else saved
    if not isinstance(s, SavedPerToken) or s.dtype != dtype:
        raise ValueError(f"saved must be a SavedPerToken measured in {dtype!r}")
    n = batch_size * seq_len
    layers = c.num_hidden_layers
    return (
        MemoryTerm("activations", layers * s.layer * n + s.layer_constant,
                   f"{layers} layers x {s.layer:,} B x {n:,} tokens", "saved tensors counted (saved_per_token)"),
        MemoryTerm("logits and loss", s.head * n, f"{s.head:,} B x {n:,} tokens",
                   "saved tensors counted (saved_per_token)"),
        MemoryTerm("token ids", s.ids * n, f"8 B x {n:,} tokens", "the embedding's backward keeps the ids"),
    )
