"""How much memory training a model takes: the training state, term by term, with its formula.

The chapter *Fine-tuning memory* (planned, issue 15) explains this module. This part counts the
*training state*: everything a training step keeps between steps, whatever the batch is.

- **Weights**: every parameter of the model, in ``param_dtype`` (for QLoRA the frozen base weights
  in 4-bit NF4 with double-quantized block constants, Dettmers et al. 2023, "QLoRA: efficient
  finetuning of quantized LLMs", NeurIPS: 4 + 0.127 bits per weight).
- **Gradients**: one per *trainable* parameter, in ``grad_dtype`` (default: ``param_dtype``).
- **Master weights**: an fp32 copy of the trainable parameters when they are stored in 16 bits
  (mixed-precision training, Micikevicius et al. 2018, "Mixed precision training", ICLR).
- **Optimizer states**: AdamW keeps two moments per trainable parameter in the dtype of the
  values it updates (torch's ``AdamW``): fp32 (8 bytes) for fp32 or master weights, 4 bytes for
  16-bit parameters updated in place without a master copy;
  8-bit AdamW keeps them in int8 with one fp32 scale per block of 2,048 values (Dettmers et al.
  2022, "8-bit optimizers via block-wise quantization", ICLR); plain SGD keeps nothing.

Mixed-precision AdamW is therefore 2 + 2 + 4 + 8 = 16 bytes per parameter before any activation
(Rajbhandari et al. 2020, "ZeRO: memory optimizations toward training trillion parameter
models", SC20, section 3.1). LoRA (Hu et al. 2021, "LoRA: low-rank adaptation of large language
models", ICLR 2022) freezes the base weights and trains r (d_in + d_out) values per adapted
matrix, kept in float32 whatever the base's dtype (PEFT's default, and :mod:`llmbook.lora`'s).

The second part counts **activations**, which depend on the batch: what autograd saves for the
backward pass, measured from one layer's actual saved tensors (:func:`saved_per_token`,
:func:`activation_memory`). Temporary buffers of the backward pass are not counted yet.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from llmbook.lora import LORA_TARGETS  # the linear layers of a decoder layer that LoRA can adapt
from llmbook.model import ModelConfig

__all__ = ["MemoryTerm", "TrainingState", "MemoryEstimate", "estimate", "measure_peak", "parameter_counts", "lora_parameter_count", "training_state",
           "LORA_TARGETS", "SavedPerToken", "saved_per_token", "activation_memory"]

#: Bytes per value of the floating-point formats this module accounts for.
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
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
            with fp32 parameters, where it would be a second identical copy, and for LoRA, whose
            adapters are float32 already.
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
    if master_weights and method != "full":
        raise ValueError("master_weights=True is for method='full': LoRA adapters are kept in float32 already")
    parameters = sum(parameter_counts(c).values())
    if method == "full":
        if lora_rank is not None:
            raise ValueError("lora_rank is only for method='lora' or 'qlora'")
        trainable = parameters
    else:
        if lora_rank is None:
            raise ValueError(f"method={method!r} needs lora_rank")
        trainable = lora_parameter_count(c, lora_rank, lora_targets)

    # What the optimizer updates: the parameters themselves, their fp32 master copy, or (LoRA)
    # float32 adapters; AdamW's moments take that dtype, the gradients the trainable values'.
    t_bytes = p_bytes if method == "full" else 4
    if grad_dtype is None:
        g_bytes = t_bytes
    s_bytes = 4 if master_weights else t_bytes
    terms = []
    if method == "qlora":
        # Only the decoder layers' linear weights are quantized (bitsandbytes' Linear4bit replaces
        # nn.Linear); the embedding, an untied output layer and the norms stay in param_dtype.
        linear = c.num_hidden_layers * sum(a * b for a, b in _linear_shapes(c).values())
        rest = parameters - linear
        terms.append(MemoryTerm("weights", round(linear * NF4_BITS_PER_WEIGHT / 8) + rest * p_bytes
                                + trainable * t_bytes,
                                f"{linear:,} linear x {NF4_BITS_PER_WEIGHT:.3f} bits + {rest:,} other x {p_bytes} B"
                                f" + {trainable:,} adapter x {t_bytes} B",
                                "Dettmers et al. 2023 (QLoRA), NF4 with double quantization"))
    elif method == "lora":
        terms.append(MemoryTerm("weights", parameters * p_bytes + trainable * t_bytes,
                                f"{parameters:,} frozen x {p_bytes} B ({param_dtype}) + {trainable:,} adapter x 4 B",
                                "one value per parameter; adapters in float32 (PEFT)"))
    else:
        terms.append(MemoryTerm("weights", parameters * p_bytes, f"{parameters:,} x {p_bytes} B ({param_dtype})",
                                "one value per parameter"))
    terms.append(MemoryTerm("gradients", trainable * g_bytes, f"{trainable:,} trainable x {g_bytes} B",
                            "one gradient per trainable parameter"))
    if master_weights:
        terms.append(MemoryTerm("master weights", trainable * 4, f"{trainable:,} trainable x 4 B (float32)",
                                "Micikevicius et al. 2018 (mixed precision)"))
    if optimizer == "adamw":
        terms.append(MemoryTerm("optimizer states", trainable * 2 * s_bytes,
                                f"{trainable:,} trainable x 2 moments x {s_bytes} B",
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
    ``layer_constant`` that one layer saves whatever the token count (RoPE's cos/sin).
    ``lora_rank``/``lora_targets``: the adapters, if measured
    with a frozen base (``None``/``()`` for full training)."""

    layer: int
    head: int
    ids: int
    layer_constant: int
    dtype: str
    lora_rank: int | None = None
    lora_targets: tuple[str, ...] = ()


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


def saved_per_token(config: ModelConfig | dict, dtype: str = "float32", tokens: tuple[int, int] = (16, 32), *,
                    lora_rank: int | None = None, lora_targets: Sequence[str] = ("q_proj", "v_proj")
                    ) -> SavedPerToken:
    """Measure :class:`SavedPerToken` for ``config`` in ``dtype`` on this machine's CPU kernels.

    Builds one decoder layer and the head with uninitialised weights (``to_empty``: sizes, not
    values, decide what is saved) and runs them at the two ``tokens`` counts of one row; the
    difference divided by the token difference is the per-token cost. Every parameter trains,
    or, with ``lora_rank``, the base is frozen and ``lora_targets`` get adapters
    (:class:`llmbook.lora.LoraLinear`, float32 as PEFT keeps them): a frozen matrix needs no
    copy of its input for its own gradient, but the adapter beside it does. The attention runs
    causally without a mask (as training does), so PyTorch's fused kernel saves O(T) per head,
    not a T x T matrix.
    """
    import torch
    import torch.nn.functional as F

    from llmbook.model import DecoderLayer, RMSNorm, RotaryEmbedding

    c = _check_config(config)
    _dtype_bytes("dtype", dtype)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    if (not isinstance(tokens, tuple) or len(tokens) != 2 or any(isinstance(t, bool) or not isinstance(t, int)
                                                                  for t in tokens) or not 2 <= tokens[0] < tokens[1]):
        raise ValueError(f"tokens must be two integers 2 <= t1 < t2, got {tokens!r}")
    if lora_rank is not None:
        lora_parameter_count(c, lora_rank, lora_targets)  # refuses unknown targets and impossible ranks
    with torch.device("meta"):  # shapes only; memory is allocated once, in the target dtype
        layer = DecoderLayer(c, 0).to(torch_dtype)
        head = torch.nn.Linear(c.hidden_size, c.vocab_size, bias=False, dtype=torch_dtype)
    layer, head = layer.to_empty(device="cpu"), head.to_empty(device="cpu")
    norm = RMSNorm(c.hidden_size, c.rms_norm_eps).to(torch_dtype)
    for module in (layer, norm, head):  # uninitialised memory may hold NaN or inf: sizes only matter,
        for p in module.parameters():  # but keep the kernels on their ordinary paths
            with torch.no_grad():
                p.uniform_(-0.01, 0.01)
    if lora_rank is not None:
        from llmbook.lora import LoraConfig, LoraLinear

        lora = LoraConfig(r=lora_rank, target_modules=tuple(lora_targets))
        for module in (layer, norm, head):
            module.requires_grad_(False)
        for name, module in list(layer.named_modules()):
            for child_name, child in list(module.named_children()):
                if child_name in lora.target_modules and isinstance(child, torch.nn.Linear):
                    setattr(module, child_name, LoraLinear(child, lora_rank, lora.scaling))
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
    # One (B, T) int64 tensor of ids is saved by the embedding's backward (not with a frozen embedding).
    return SavedPerToken(layer=per_layer, head=(h2 - h1) // (t2 - t1), ids=8 if lora_rank is None else 0,
                         layer_constant=l1 - per_layer * t1, dtype=dtype,
                         lora_rank=lora_rank, lora_targets=tuple(lora_targets) if lora_rank is not None else ())


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


# -- the whole step: what is alive at each phase, and the peak ----------------------------------
#
# llmbook.train's step runs forward, loss, backward, clipping, the optimizer step, then frees the
# gradients. So three moments can set the peak (Rajbhandari et al. 2020 call the non-state part
# "residual states": activations, temporary buffers, fragmentation):
#   forward end:     state + saved activations + the logits just computed
#   backward start:  state + saved activations + two float32 (B, T, V) gradient buffers: of the
#                    log-probabilities and of the logits (the logits are already freed)
#   optimizer step:  state + gradients + the optimizer's temporaries
# where state = weights + master weights + optimizer states (the gradients exist only from the
# backward pass to the end of the step). With gradient checkpointing the layers keep only their
# inputs, and the backward pass rebuilds one layer's saved tensors at a time on top.


@dataclass(frozen=True)
class MemoryEstimate:
    """A training step's memory: every term (bytes, formula, source), which terms are alive at
    each phase of the step (``phases``), and the ``peak`` over phases (bytes)."""

    terms: tuple[MemoryTerm, ...]
    phases: dict[str, tuple[str, ...]]
    parameters: int
    trainable: int

    def term(self, name: str) -> MemoryTerm:
        for t in self.terms:
            if t.name == name:
                return t
        raise KeyError(f"no term {name!r}; the terms are {[t.name for t in self.terms]}")

    @property
    def phase_bytes(self) -> dict[str, int]:
        return {phase: sum(self.term(n).bytes for n in names) for phase, names in self.phases.items()}

    @property
    def peak_phase(self) -> str:
        totals = self.phase_bytes
        return max(totals, key=totals.get)

    @property
    def peak(self) -> int:
        return max(self.phase_bytes.values())

    def __str__(self) -> str:
        rows = [f"{t.name:>28}: {t.bytes / 1e9:8.3f} GB  ({t.formula})" for t in self.terms]
        rows += [f"{'at ' + phase:>28}: {total / 1e9:8.3f} GB" for phase, total in self.phase_bytes.items()]
        rows.append(f"{'peak':>28}: {self.peak / 1e9:8.3f} GB  ({self.peak_phase})")
        return "\n".join(rows)


#: Bytes per value of a float32 tensor: the loss and its gradients are computed in float32.
_F32 = 4


def estimate(
    config: ModelConfig | dict,
    *,
    method: str = "full",
    param_dtype: str = "float32",
    grad_dtype: str | None = None,
    optimizer: str = "adamw",
    master_weights: bool = False,
    batch_size: int = 1,
    seq_len: int = 1024,
    gradient_checkpointing: bool = False,
    lora_rank: int | None = None,
    lora_targets: Sequence[str] = ("q_proj", "v_proj"),
    saved: SavedPerToken | None = None,
    fused_optimizer: bool = False,
) -> MemoryEstimate:
    """The peak memory of one training step of ``llmbook.train`` (bytes), term by term.

    The training state comes from :func:`training_state` (same arguments), the activations from
    :func:`activation_memory` (one layer's saved tensors, counted on this machine's CPU kernels
    unless ``saved`` is given), and the transient buffers from the step's order (module comments):
    the logits (B, T, V) in ``param_dtype`` at the end of the forward pass (plus their float32 copy
    for the loss when 16-bit), two float32 (B, T, V) gradient buffers at the start of the backward
    pass, and the optimizer's per-tensor temporaries (two copies of the largest trainable
    tensor, in the optimizer states' dtype: torch's single-tensor AdamW on the CPU; none with
    ``fused_optimizer``, the fused AdamW ``llmbook.train`` uses on CUDA; torch's default
    multi-tensor ("foreach") AdamW on a GPU needs more). With ``gradient_checkpointing`` the layers keep
    their inputs only (B, T, D) and one layer's saved tensors are rebuilt during the backward pass.

    Not counted, so compare with a measurement above a baseline that holds them: the framework
    itself (CUDA context, kernels, the allocator's reserve), the data, and fragmentation.
    QLoRA's activations are counted like LoRA's on a ``param_dtype`` base (its 4-bit weights are
    dequantized to that dtype for each matmul). Raises ``ValueError`` for anything
    :func:`training_state` or :func:`activation_memory` refuses, and for a ``saved`` measured for
    other adapters than the estimate's.
    """
    c = _check_config(config)
    state = training_state(c, method=method, param_dtype=param_dtype, grad_dtype=grad_dtype, optimizer=optimizer,
                           master_weights=master_weights, lora_rank=lora_rank, lora_targets=lora_targets)
    for name, flag in (("gradient_checkpointing", gradient_checkpointing), ("fused_optimizer", fused_optimizer)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be True or False, got {flag!r}")
    if saved is not None and isinstance(saved, SavedPerToken) and (
            saved.lora_rank != (lora_rank if method != "full" else None)
            or (method != "full" and saved.lora_targets != tuple(lora_targets))):
        raise ValueError(f"saved was measured for lora_rank={saved.lora_rank}, lora_targets={saved.lora_targets}; "
                         f"this estimate is for method={method!r}, lora_rank={lora_rank}, "
                         f"lora_targets={tuple(lora_targets) if method != 'full' else ()}")
    if saved is None:  # a frozen base saves less: count it with the adapters in place
        saved = saved_per_token(c, param_dtype, lora_rank=lora_rank if method != "full" else None,
                                lora_targets=lora_targets)
    s = saved
    acts = {t.name: t for t in activation_memory(c, batch_size=batch_size, seq_len=seq_len, dtype=param_dtype,
                                                 saved=s)}
    n = batch_size * seq_len
    p_bytes = DTYPE_BYTES[param_dtype]
    layers = c.num_hidden_layers
    terms = list(state.terms)
    layer_input = c.hidden_size * p_bytes * n
    if gradient_checkpointing:
        terms.append(MemoryTerm("checkpointed layer inputs", layers * layer_input,
                                f"{layers} layers x {c.hidden_size} x {p_bytes} B x {n:,} tokens",
                                "each layer keeps its input (Chen et al. 2016)"))
        terms.append(MemoryTerm("recomputed layer", s.layer * n + s.layer_constant,
                                f"one layer's saved tensors, {s.layer:,} B x {n:,} tokens",
                                "rebuilt in the backward pass, one layer at a time"))
    else:
        terms.append(acts["activations"])
    terms += [acts["logits and loss"], acts["token ids"]]
    # Modelled, not counted (a bound): the MLP's backward holds the gradients of the gate and up
    # projections' outputs beside the gradient of the layer's input; the attention's are smaller.
    buffers = (2 * c.intermediate_size + c.hidden_size) * p_bytes
    terms.append(MemoryTerm("layer backward buffers", buffers * n,
                            f"(2 x {c.intermediate_size} + {c.hidden_size}) x {p_bytes} B x {n:,} tokens",
                            "one layer's gradient buffers: the MLP's two intermediate gradients and dx"))
    logits = c.vocab_size * n
    terms.append(MemoryTerm("logits", logits * p_bytes, f"{n:,} tokens x {c.vocab_size:,} x {p_bytes} B",
                            "the output layer's result, freed once the loss is computed"))
    if p_bytes != _F32:
        terms.append(MemoryTerm("float32 logits copy", logits * _F32, f"{n:,} x {c.vocab_size:,} x 4 B",
                                "the loss is computed in float32"))
    terms.append(MemoryTerm("loss gradient buffers", 2 * logits * _F32, f"2 x {n:,} x {c.vocab_size:,} x 4 B",
                            "gradients of the log-probabilities and of the logits"))
    shapes = _linear_shapes(c)
    g_bytes = {t.name: t.bytes for t in state.terms}["gradients"] // max(state.trainable, 1)
    counts = parameter_counts(c)
    if method == "full":
        largest = max([c.vocab_size * c.hidden_size] + [a * b for a, b in shapes.values()])
        top = counts["embedding"] + counts["output"] + counts["norms"] // (2 * layers + 1) + (
            counts["attention"] + counts["mlp"]) // layers
    else:
        largest = max(lora_rank * max(shapes[t]) for t in lora_targets)
        top = state.trainable // layers
    terms.append(MemoryTerm("gradients so far (head, top layer)", top * g_bytes,
                            f"{top:,} x {g_bytes} B", "the first gradients the backward pass writes"))
    s_bytes = 4 if (master_weights or method != "full") else p_bytes
    terms.append(MemoryTerm("optimizer step buffers", 0 if fused_optimizer else 2 * largest * s_bytes,
                            "none (fused AdamW)" if fused_optimizer else
                            f"2 x {largest:,} (largest trainable tensor) x {s_bytes} B",
                            "a fused AdamW updates in place" if fused_optimizer else
                            "torch's AdamW on the CPU updates one tensor at a time"))

    keep = [t.name for t in state.terms if t.name != "gradients"]
    saved_names = (["checkpointed layer inputs"] if gradient_checkpointing else ["activations"]) + [
        "logits and loss", "token ids"]
    forward = keep + saved_names + ["logits"] + (["float32 logits copy"] if p_bytes != _F32 else [])
    phases = {"forward end": tuple(forward),
              "backward start": tuple(keep + saved_names + ["loss gradient buffers"])}
    if gradient_checkpointing:
        # The top layer is rebuilt first, after the head: every layer input is still kept and only
        # the head's and that layer's gradients exist. (Lower layers find fewer inputs kept and
        # more gradients; the step's optimizer phase bounds the last of them.)
        phases["backward, top layer"] = tuple(keep + ["checkpointed layer inputs", "token ids", "recomputed layer",
                                                      "layer backward buffers", "gradients so far (head, top layer)"])
    else:
        phases["backward, top layer"] = tuple(keep + ["activations", "token ids", "layer backward buffers",
                                                      "gradients so far (head, top layer)"])
    phases["optimizer step"] = tuple(keep + ["gradients", "optimizer step buffers"])
    return MemoryEstimate(terms=tuple(terms), phases=phases, parameters=state.parameters, trainable=state.trainable)


# -- measured: the peak of real training steps ---------------------------------------------------
#
# A process-level measurement that misses nothing: the kernel's high-water mark of the resident
# set (VmHWM in /proc/self/status), reset just before the measured part by writing 5 to
# /proc/self/clear_refs (Linux >= 4.0). No sampling, so no short peak slips between samples.
# Two precautions make RSS follow the live tensors: glibc's malloc is told to serve every
# allocation of 64 KiB or more with mmap and to return it when freed (MALLOC_MMAP_THRESHOLD_:
# otherwise it raises that threshold as tensors come and go and keeps freed memory in its heap,
# and RSS then overstates what is alive), and one warm-up step runs before the baseline, so that
# the kernels' one-time buffers and code pages are not counted.

MEASURE_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def _status_bytes(key: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key} line")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")


def _build_for_measure(model: str | dict, param_dtype: str, method: str, lora_rank: int | None,
                       lora_targets: Sequence[str], seed: int):
    import torch

    from llmbook.hub import REAL_MODEL, SHIPPED_MODELS, load, real_model_dir
    from llmbook.model import CausalLM

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[param_dtype]
    torch.manual_seed(seed)
    if isinstance(model, dict):
        net = CausalLM(ModelConfig.from_hf(model) if "model_type" in model else ModelConfig(**model), dtype=dtype)
    elif model in SHIPPED_MODELS:
        net = load(model, device="cpu", dtype=dtype)[0]
    elif model == REAL_MODEL:
        net = load(str(real_model_dir()), device="cpu", dtype=dtype)[0]
    else:
        raise ValueError(f"model must be {list(SHIPPED_MODELS) + [REAL_MODEL]} or a config dict, got {model!r}")
    if method == "lora":
        from llmbook.lora import LoraConfig, add_lora

        add_lora(net, LoraConfig(r=lora_rank, target_modules=tuple(lora_targets)), seed=seed)
    return net


def _measure_here(spec: dict) -> dict:
    """Run in a fresh process (see :func:`measure_peak`): warm up, reset the high-water mark,
    build the model, reset again, train ``steps`` steps with ``llmbook.train.train``."""
    import gc

    import torch

    from llmbook.train import TrainConfig, train

    torch.set_num_threads(spec["threads"])
    build = lambda: _build_for_measure(spec["model"], spec["param_dtype"], spec["method"],  # noqa: E731
                                       spec["lora_rank"], spec["lora_targets"], 0)
    net = build()
    vocab = net.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    docs = [torch.randint(3, vocab, (spec["seq_len"] + 1,), generator=generator).tolist()
            for _ in range(spec["batch_size"] * (spec["steps"] + 1))]
    config = TrainConfig(seq_len=spec["seq_len"], batch_size=spec["batch_size"], max_steps=spec["steps"],
                         warmup_steps=0, lr=1e-4, min_lr=1e-5, dtype="float32",
                         gradient_checkpointing=spec["gradient_checkpointing"])
    warm = TrainConfig(**{**config.to_dict(), "max_steps": 1})
    train(warm, docs, model=net, progress=False)  # kernels' one-time buffers, before the baseline
    del net
    gc.collect()
    _reset_peak()
    baseline = _status_bytes("VmRSS")
    net = build()
    after_build = _status_bytes("VmRSS") - baseline
    _reset_peak()  # loading may pass through a second copy of the weights: not the step's peak
    train(config, docs, model=net, progress=False)
    return {"peak_bytes": _status_bytes("VmHWM") - baseline, "model_bytes": after_build,
            "baseline_bytes": baseline, "parameters": sum(p.numel() for p in net.parameters())}


def measure_peak(model: str | dict, *, method: str = "full", param_dtype: str = "float32", batch_size: int = 1,
                 seq_len: int = 256, gradient_checkpointing: bool = False, lora_rank: int | None = None,
                 lora_targets: Sequence[str] = ("q_proj", "v_proj"), steps: int = 2, threads: int | None = None,
                 timeout: float = 600.0) -> dict:
    """Measure the memory peak of ``steps`` real training steps (``llmbook.train.train``, AdamW,
    no mixed precision: the optimizer states have the weights' dtype) in a fresh Python process.

    ``model``: a shipped model name, ``"smollm2-135m-instruct"``, or a config dict (Hugging Face
    config.json or :class:`ModelConfig` fields; random weights). Returns a dict with ``peak_bytes``
    (the resident-set high-water mark during training minus the resident set before the model was
    built: weights, gradients, optimizer states, activations and buffers), ``model_bytes`` (the
    resident set the built model added) and ``parameters``. Linux only (it reads /proc); raises
    ``ValueError`` for arguments out of range and ``RuntimeError`` if the child process fails.
    """
    import os
    import subprocess
    import sys

    if method not in ("full", "lora"):
        raise ValueError(f"method must be 'full' or 'lora' (QLoRA's 4-bit kernels need a GPU), got {method!r}")
    _dtype_bytes("param_dtype", param_dtype)
    for name, value, low in (("batch_size", batch_size, 1), ("seq_len", seq_len, 2), ("steps", steps, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if (method == "lora") != (lora_rank is not None):
        raise ValueError("lora_rank is required with method='lora' and refused otherwise")
    if not os.path.exists("/proc/self/clear_refs"):
        raise RuntimeError("measure_peak reads the kernel's memory high-water mark in /proc: Linux only")
    spec = {"model": model, "method": method, "param_dtype": param_dtype, "batch_size": batch_size,
            "seq_len": seq_len, "gradient_checkpointing": bool(gradient_checkpointing), "lora_rank": lora_rank,
            "lora_targets": list(lora_targets), "steps": steps,
            "threads": threads if threads is not None else __import__("torch").get_num_threads()}
    code = "import json, sys; from llmbook.memory import _measure_here; " \
           "print(json.dumps(_measure_here(json.loads(sys.argv[1]))))"
    done = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **MEASURE_ENV})
    if done.returncode != 0:
        raise RuntimeError(f"the measuring process failed:\n{done.stderr[-3000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), **spec}


# -- the committed measurements: python -m llmbook.memory --out lib/llmbook/assets/results/memory.json

#: A TinyWorld-main twice as wide and twice as deep (random weights): a third model size.
SCALED_CONFIG = {"vocab_size": 1499, "hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 12,
                 "num_attention_heads": 16, "num_key_value_heads": 4, "max_position_embeddings": 1024,
                 "tie_word_embeddings": True}
_ALL = list(LORA_TARGETS)
#: (label, model, method, param_dtype, batch_size, seq_len, gradient_checkpointing, lora_rank).
#: bfloat16 entries are small: this CPU has no bfloat16 matrix units, and PyTorch's fallback
#: kernels run a 16-bit step several times slower than float32 (see the inference-time chapter).
MEASURE_GRID = (
    ("TinyWorld, full, fp32, 8x256", "tinyworld-main", "full", "float32", 8, 256, False, None),
    ("TinyWorld, full, fp32, 16x512", "tinyworld-main", "full", "float32", 16, 512, False, None),
    ("TinyWorld, full, fp32, 4x1024", "tinyworld-main", "full", "float32", 4, 1024, False, None),
    ("TinyWorld, full, fp32, 16x512, checkpointing", "tinyworld-main", "full", "float32", 16, 512, True, None),
    ("TinyWorld, full, bf16, 8x256", "tinyworld-main", "full", "bfloat16", 8, 256, False, None),
    ("TinyWorld, LoRA r=8, fp32, 16x512", "tinyworld-main", "lora", "float32", 16, 512, False, 8),
    ("TinyWorld, LoRA r=8, fp32, 16x512, checkpointing", "tinyworld-main", "lora", "float32", 16, 512, True, 8),
    ("TinyWorld x2, full, fp32, 8x512", "scaled", "full", "float32", 8, 512, False, None),
    ("TinyWorld x2, full, fp32, 8x512, checkpointing", "scaled", "full", "float32", 8, 512, True, None),
    ("TinyWorld x2, LoRA r=16, fp32, 8x512", "scaled", "lora", "float32", 8, 512, False, 16),
    ("SmolLM2, full, fp32, 4x256", "smollm2-135m-instruct", "full", "float32", 4, 256, False, None),
    ("SmolLM2, full, fp32, 4x256, checkpointing", "smollm2-135m-instruct", "full", "float32", 4, 256, True, None),
    ("SmolLM2, full, bf16, 1x256", "smollm2-135m-instruct", "full", "bfloat16", 1, 256, False, None),
    ("SmolLM2, LoRA r=8, fp32, 4x256", "smollm2-135m-instruct", "lora", "float32", 4, 256, False, 8),
    ("SmolLM2, LoRA r=8, fp32, 4x256, checkpointing", "smollm2-135m-instruct", "lora", "float32", 4, 256, True, 8),
)


def model_config(model: str | dict) -> ModelConfig:
    """The :class:`ModelConfig` of a grid entry's model: a shipped model, the real model, or ``"scaled"``."""
    from llmbook.hub import ASSETS_DIR, REAL_MODEL, SHIPPED_MODELS, real_model_dir

    if model == "scaled":
        return ModelConfig(**SCALED_CONFIG)
    if isinstance(model, dict):
        return _check_config(model) if "model_type" in model else ModelConfig(**model)
    if model in SHIPPED_MODELS:
        path = ASSETS_DIR / model / "config.json"
    elif model == REAL_MODEL:
        path = real_model_dir() / "config.json"
    else:
        raise ValueError(f"model must be one of {list(SHIPPED_MODELS) + [REAL_MODEL, 'scaled']} or a config dict, "
                         f"got {model!r}")
    return ModelConfig.from_hf(json.loads(path.read_text(encoding="utf-8")))


def _estimate_row(row: dict) -> dict:
    """The estimate's fields of a grid row, from the row's settings and the current code."""
    rank = row["lora_rank"]
    est = estimate(model_config(row["model"]), method=row["method"], param_dtype=row["param_dtype"],
                   batch_size=row["batch_size"], seq_len=row["seq_len"],
                   gradient_checkpointing=row["gradient_checkpointing"], lora_rank=rank,
                   lora_targets=row["lora_targets"] if rank is not None else ("q_proj", "v_proj"))
    return {"estimated_peak_bytes": est.peak, "estimated_peak_phase": est.peak_phase,
            "estimated_phase_bytes": est.phase_bytes, "terms": {x.name: x.bytes for x in est.terms},
            "parameters": est.parameters, "trainable": est.trainable}


def run_grid(grid=MEASURE_GRID, *, threads: int | None = None, out=None) -> dict:
    """Measure every grid entry (:func:`measure_peak`) beside its :func:`estimate`; JSON-ready.

    With ``out`` (a path) the results are written after every entry, and entries already in
    that file with the same settings are kept, not measured again (a long run can resume)."""
    import platform
    import time
    from pathlib import Path

    import torch

    done = {}
    if out is not None and Path(out).is_file():
        done = {r["label"]: r for r in json.loads(Path(out).read_text(encoding="utf-8"))["rows"]}
    rows = []
    results = {"settings": {"steps": 2, "optimizer": "torch AdamW (no master weights)", "measure_env": MEASURE_ENV,
                            "threads": threads if threads is not None else torch.get_num_threads()},
               "versions": {"torch": torch.__version__, "python": platform.python_version()},
               "machine": platform.machine(), "rows": rows}
    for label, model, method, dtype, b, t, checkpointing, rank in grid:
        old = done.get(label)
        if old is not None and (old["model"], old["method"], old["param_dtype"], old["batch_size"], old["seq_len"],
                                old["gradient_checkpointing"], old["lora_rank"]) == (
                                    model, method, dtype, b, t, checkpointing, rank):
            rows.append(old)
            continue
        targets = _ALL if rank is not None else ("q_proj", "v_proj")
        start = time.perf_counter()
        measured = measure_peak(SCALED_CONFIG if model == "scaled" else model, method=method, param_dtype=dtype,
                                batch_size=b, seq_len=t, gradient_checkpointing=checkpointing, lora_rank=rank,
                                lora_targets=targets, threads=threads)
        row = {"label": label, "model": model, "method": method, "param_dtype": dtype, "batch_size": b,
               "seq_len": t, "gradient_checkpointing": checkpointing, "lora_rank": rank,
               "lora_targets": list(targets) if rank is not None else [],
               "measured_peak_bytes": measured["peak_bytes"], "measured_model_bytes": measured["model_bytes"],
               "seconds": round(time.perf_counter() - start, 1)}
        row.update(_estimate_row(row))
        rows.append(row)
        _report(row)
        if out is not None:
            Path(out).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return results


def _report(row: dict) -> None:
    est, meas = row["estimated_peak_bytes"], row["measured_peak_bytes"]
    print(f"{row['label']:>50}: measured {meas / 1e6:8.1f} MB, estimated {est / 1e6:8.1f} MB "
          f"({est / meas - 1:+.1%}, {row['estimated_peak_phase']})", flush=True)


def main(argv: Sequence[str] | None = None) -> dict:
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="python -m llmbook.memory",
                                     description="Measure the memory peak of real training steps beside the estimate.")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in the measuring process")
    parser.add_argument("--only", default=None, help="measure only the grid entries whose label contains this")
    parser.add_argument("--reestimate", type=Path, default=None,
                        help="recompute the estimates of a results file with this code, keeping its measurements")
    args = parser.parse_args(argv)
    if args.reestimate is not None:
        results = json.loads(args.reestimate.read_text(encoding="utf-8"))
        for row in results["rows"]:
            row.update(_estimate_row(row))
            _report(row)
        (args.out or args.reestimate).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
        return results
    grid = [g for g in MEASURE_GRID if args.only is None or args.only in g[0]]
    if not grid:
        parser.error(f"no grid entry's label contains {args.only!r}")
    results = run_grid(grid, threads=args.threads, out=args.out)
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
