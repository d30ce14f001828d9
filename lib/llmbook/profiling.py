"""Where the time of a forward pass goes, counted: FLOPs and bytes moved per component.

The chapter *Inference time* (planned) explains this module; this part is the analytic count
that the chapter's measurements are placed against (a roofline: time >= max(FLOPs / peak FLOP/s,
bytes / memory bandwidth)).

For a Llama-family decoder with hidden size D, L layers, H query heads and K key/value heads of
size d, MLP width I and vocabulary V, a forward pass over T new tokens of B rows, after S_past
cached tokens (S = S_past + T keys per query), costs in multiply-adds x 2 = FLOPs:

- attention projections: 2 B T L (D H d + 2 D K d + H d D)   (q, k, v, o)
- attention scores:      2 B T L H S d x 2                    (Q K^T and softmax(.) V, dense: the
  causal mask is applied, not skipped, as PyTorch's math attention computes it)
- MLP:                   2 B T L (3 D I)                      (gate, up, down)
- output projection:     2 B T_out D V                        (T_out = T, or 1 for the last position)

Elementwise work (RMSNorm, RoPE, SiLU, softmax, residual adds) is O(B T D) and left out, as
``torch.utils.flop_counter.FlopCounterMode`` leaves it out. Bytes: every weight matrix is read
once per forward pass whatever B and T are (that is why decoding one token at a time is
memory-bound), the embedding only for the B T rows it looks up; the KV cache reads S and writes
T positions of 2 L K d values per row.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmbook.model import ModelConfig

__all__ = ["ForwardCost", "forward_cost"]

COMPONENTS = ("embedding", "attention projections", "attention scores", "MLP", "norms", "output projection")


@dataclass(frozen=True)
class ForwardCost:
    """FLOPs and bytes of one forward pass, per component (see the module docstring).

    ``flops[c]``: floating-point operations (2 per multiply-add) of component c;
    ``weight_bytes[c]``: bytes of parameters c reads; ``kv_read_bytes``/``kv_write_bytes``: the
    KV cache traffic of the attention; ``activation_bytes`` is not modelled.
    """

    flops: dict[str, int]
    weight_bytes: dict[str, int]
    kv_read_bytes: int
    kv_write_bytes: int

    @property
    def total_flops(self) -> int:
        return sum(self.flops.values())

    @property
    def total_bytes(self) -> int:
        return sum(self.weight_bytes.values()) + self.kv_read_bytes + self.kv_write_bytes

    @property
    def arithmetic_intensity(self) -> float:
        """FLOPs per byte moved: below the machine's peak FLOP/s / bandwidth, the pass is memory-bound."""
        return self.total_flops / self.total_bytes


def _check(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def forward_cost(config: ModelConfig, *, new_tokens: int, past_tokens: int = 0, batch: int = 1,
                 logits: str = "all", bytes_per_value: int = 4, kv_bytes_per_value: int | None = None
                 ) -> ForwardCost:
    """The analytic cost of one forward pass of ``config``'s model.

    Args:
        new_tokens: T, tokens per row this pass reads (the prompt for prefill, 1 per decode step).
        past_tokens: S_past, tokens already in the KV cache.
        batch: B, rows.
        logits: ``"all"`` (a logit row per position, as ``model(ids)``) or ``"last"`` (only the last
            position, as generation's prefill asks with ``last_only=True``).
        bytes_per_value: size of a weight (4 for float32, 2 for bfloat16/float16, 1 for int8).
        kv_bytes_per_value: size of a cached key/value (default: ``bytes_per_value``).
    Raises ``ValueError`` for a non-ModelConfig, counts below their minimum or an unknown ``logits``.
    """
    if not isinstance(config, ModelConfig):
        raise ValueError(f"config must be a ModelConfig, got {type(config).__name__}")
    t, s_past, b = _check("new_tokens", new_tokens, 1), _check("past_tokens", past_tokens, 0), _check("batch", batch, 1)
    _check("bytes_per_value", bytes_per_value, 1)
    kv_size = bytes_per_value if kv_bytes_per_value is None else _check("kv_bytes_per_value", kv_bytes_per_value, 1)
    if logits not in ("all", "last"):
        raise ValueError(f"logits must be 'all' or 'last', got {logits!r}")
    c = config
    d_model, layers, heads, kv_heads, d = c.hidden_size, c.num_hidden_layers, c.num_attention_heads, \
        c.num_key_value_heads, c.head_dim
    s = s_past + t
    t_out = t if logits == "all" else 1
    proj_params = d_model * heads * d + 2 * d_model * kv_heads * d + heads * d * d_model
    mlp_params = 3 * d_model * c.intermediate_size
    flops = {
        "embedding": 0,
        "attention projections": 2 * b * t * layers * proj_params,
        "attention scores": 2 * 2 * b * t * layers * heads * s * d,
        "MLP": 2 * b * t * layers * mlp_params,
        "norms": 0,
        "output projection": 2 * b * t_out * d_model * c.vocab_size,
    }
    weight_bytes = {
        "embedding": b * t * d_model * bytes_per_value,  # the looked-up rows only
        "attention projections": layers * proj_params * bytes_per_value,
        "attention scores": 0,
        "MLP": layers * mlp_params * bytes_per_value,
        "norms": (2 * layers + 1) * d_model * bytes_per_value,
        "output projection": d_model * c.vocab_size * bytes_per_value,  # tied or not, read whole
    }
    per_position = 2 * layers * kv_heads * d * kv_size
    return ForwardCost(flops=flops, weight_bytes=weight_bytes, kv_read_bytes=b * s * per_position,
                       kv_write_bytes=b * t * per_position)
