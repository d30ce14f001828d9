"""A tiny Llama GGUF file written with the `gguf` package, for fast converter tests.

It has what the real model's file has (a byte-level BPE vocabulary with merges and control
tokens, a chat template, Q4_1 linear weights, a Q8_0 embedding, F32 norms, grouped-query
attention) at a size that converts in well under a second.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llmbook.tokenizer import bytes_to_unicode

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "1 2"]
CHAT_TEMPLATE = (
    "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\n'}}{% endif %}"
)


def write_tiny_gguf(path: Path, *, pre: str = "gpt2", heads: int = 4, kv_heads: int = 2, tie: bool = True,
                    architecture: str = "llama", extra_uint32: dict[str, int] | None = None) -> Path:
    """Write a 2-layer Llama GGUF with random weights (seeded) to ``path`` and return it."""
    import gguf
    from gguf import GGMLQuantizationType as Q

    rng = np.random.default_rng(0)
    table = bytes_to_unicode()
    tokens = SPECIAL + [table[b] for b in range(256)] + [m.replace(" ", "") for m in MERGES]
    types = [3] * len(SPECIAL) + [1] * (len(tokens) - len(SPECIAL))  # 3 = CONTROL, 1 = NORMAL
    vocab, hidden, ffn, layers, head_dim = len(tokens), 64, 96, 2, 64 // heads

    w = gguf.GGUFWriter(str(path), architecture)
    w.add_block_count(layers)
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)
    for key, value in (extra_uint32 or {}).items():
        w.add_uint32(key, value)

    def add(name: str, shape: tuple[int, ...], qtype=Q.F32, scale: float = 0.1) -> None:
        values = (rng.standard_normal(shape) * scale).astype(np.float32)
        if qtype == Q.F32:
            w.add_tensor(name, values)
        else:
            w.add_tensor(name, gguf.quants.quantize(values, qtype), raw_dtype=qtype)

    add("token_embd.weight", (vocab, hidden), Q.Q8_0)
    add("output_norm.weight", (hidden,), scale=1.0)
    if not tie:
        add("output.weight", (vocab, hidden), Q.Q8_0)
    for i in range(layers):
        add(f"blk.{i}.attn_norm.weight", (hidden,), scale=1.0)
        add(f"blk.{i}.ffn_norm.weight", (hidden,), scale=1.0)
        add(f"blk.{i}.attn_q.weight", (heads * head_dim, hidden), Q.Q4_1)
        add(f"blk.{i}.attn_k.weight", (kv_heads * head_dim, hidden), Q.Q4_1)
        add(f"blk.{i}.attn_v.weight", (kv_heads * head_dim, hidden), Q.Q4_1)
        add(f"blk.{i}.attn_output.weight", (hidden, heads * head_dim), Q.Q4_1)
        add(f"blk.{i}.ffn_gate.weight", (ffn, hidden), Q.Q4_1)
        add(f"blk.{i}.ffn_up.weight", (ffn, hidden), Q.Q4_1)
        add(f"blk.{i}.ffn_down.weight", (hidden, ffn), Q.Q4_1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
