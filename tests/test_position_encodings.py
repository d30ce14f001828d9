"""The model's position encodings (RoPE, NoPE, ALiBi, learned absolute) and llmbook.long_context."""

import math

import numpy as np
import pytest
import torch

from llmbook import long_context as lc
from llmbook.generate import generate_ids
from llmbook.hub import ASSETS_DIR, load
from llmbook.model import POSITION_ENCODINGS, CausalLM, ModelConfig, alibi_slopes
from llmbook.train import TrainConfig, train
from llmbook.world import default_splits


def small(encoding: str, **overrides) -> CausalLM:
    torch.manual_seed(0)
    fields = dict(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=24, position_encoding=encoding)
    return CausalLM(ModelConfig(**{**fields, **overrides})).eval()


@pytest.fixture(scope="module")
def main_model():
    return load(ASSETS_DIR / "tinyworld-main")


def test_alibi_slopes_match_bloom():
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    for n in range(1, 17):
        bloom = build_alibi_tensor(torch.ones(1, 3), n, torch.float32)[:, 0, 1]  # slope * position 1
        assert torch.allclose(torch.tensor(alibi_slopes(n)), bloom), n


def test_alibi_attention_equals_bloom_bias():
    # Bloom adds +m_h * j (key position only); ALiBi's -m_h (i - j) differs by m_h * i per query
    # row, which softmax ignores: the probabilities must agree.
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    model, t = small("alibi"), 12
    ids = torch.randint(0, 50, (1, t), generator=torch.Generator().manual_seed(1))
    ours = lc.attention_weights(model, ids)  # (L, H, T, T)
    captured = []
    hook = model.model.layers[0].self_attn.register_forward_pre_hook(lambda _m, a: captured.append(a[0]))
    model(ids)
    hook.remove()
    attn = model.model.layers[0].self_attn
    q = attn.q_proj(captured[0]).view(1, t, 4, 8).transpose(1, 2)
    k = attn.k_proj(captured[0]).view(1, t, 2, 8).transpose(1, 2).repeat_interleave(2, dim=1)
    bias = build_alibi_tensor(torch.ones(1, t), 4, torch.float32).view(1, 4, 1, t)
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    ref = torch.softmax((q @ k.transpose(-1, -2) / math.sqrt(8) + bias).masked_fill(~causal, -math.inf), -1)
    assert torch.allclose(ours[0], ref[0], atol=1e-6)


@pytest.mark.parametrize("encoding", POSITION_ENCODINGS)
def test_attention_weights_reproduce_the_layer(encoding):
    model, t = small(encoding), 10
    ids = torch.randint(0, 50, (1, t), generator=torch.Generator().manual_seed(2))
    weights = lc.attention_weights(model, ids)
    assert weights.shape == (2, 4, t, t)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 4, t), atol=1e-6)
    assert float(weights.triu(1).abs().max()) == 0.0  # causal
    inputs, outputs = [], []
    attn = model.model.layers[1].self_attn
    h1 = attn.register_forward_pre_hook(lambda _m, a: inputs.append(a[0]))
    h2 = attn.register_forward_hook(lambda _m, _a, out: outputs.append(out))
    model(ids)
    h1.remove(), h2.remove()
    v = attn.v_proj(inputs[0]).view(1, t, 2, 8).transpose(1, 2).repeat_interleave(2, dim=1)
    mixed = (weights[1][None] @ v).transpose(1, 2).reshape(1, t, 32)
    assert torch.allclose(attn.o_proj(mixed), outputs[0], atol=1e-5)


@pytest.mark.parametrize("encoding", POSITION_ENCODINGS)
def test_cache_and_padding_give_the_full_pass(encoding):
    model = small(encoding)
    ids = torch.randint(0, 50, (2, 10), generator=torch.Generator().manual_seed(3))
    full = model(ids)
    cache = model.new_cache(2, 16)
    parts = torch.cat([model(ids[:, :6], cache=cache), model(ids[:, 6:], cache=cache)], dim=1)
    assert torch.allclose(parts, full, atol=1e-5)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :3] = 0  # row 1 is left-padded: it must get the logits it gets alone
    alone = model(ids[1:, 3:])
    assert torch.allclose(model(ids, attention_mask=mask)[1, 3:], alone[0], atol=1e-5)
    cache = model.new_cache(2, 16)
    model(ids[:, :6], cache=cache, attention_mask=mask[:, :6])
    assert torch.allclose(model(ids[:, 6:], cache=cache)[1], alone[0, 3:], atol=1e-5)


def test_nope_sees_a_set_and_the_others_an_order():
    # Without a position signal, the first layer's output at the last token is a function of
    # the *set* of earlier tokens: permuting them changes nothing there in a one-layer model.
    ids = torch.tensor([[5, 9, 13, 17, 21, 25, 30]])
    permuted = torch.tensor([[21, 5, 25, 9, 17, 13, 30]])
    for encoding in POSITION_ENCODINGS:
        model = small(encoding, num_hidden_layers=1)
        a, b = model(ids)[0, -1], model(permuted)[0, -1]
        assert torch.allclose(a, b, atol=1e-5) == (encoding == "nope"), encoding


def test_positions_past_the_context():
    for encoding in ("rope", "nope", "alibi"):
        model = small(encoding)
        ids = torch.randint(0, 50, (1, 30))
        with pytest.raises(ValueError, match="allow_extrapolation=True"):
            model(ids)
        assert model(ids, allow_extrapolation=True).shape == (1, 30, 50)
        with pytest.raises(ValueError, match="allow_extrapolation=True"):
            generate_ids(model, [[1, 2, 3]], max_new_tokens=25, temperature=0.0)
        out = generate_ids(model, [[1, 2, 3]], max_new_tokens=25, temperature=0.0, allow_extrapolation=True)
        assert len(out.tokens[0]) == 25
    learned = small("learned")
    with pytest.raises(ValueError, match="learned absolute positions have no embedding"):
        learned(torch.randint(0, 50, (1, 30)), allow_extrapolation=True)


def test_bad_position_encodings():
    with pytest.raises(ValueError, match="position_encoding must be one of"):
        small("sinusoidal")
    with pytest.raises(ValueError, match="head_dim must be even"):
        ModelConfig(vocab_size=10, hidden_size=12, intermediate_size=8, num_hidden_layers=1,
                    num_attention_heads=4, head_dim=3)
    ModelConfig(vocab_size=10, hidden_size=12, intermediate_size=8, num_hidden_layers=1, num_attention_heads=4,
                head_dim=3, position_encoding="alibi")  # ALiBi rotates nothing: odd is fine
    with pytest.raises(ValueError, match="cannot be written as a LlamaForCausalLM config.json"):
        small("alibi").config.to_hf()
    config = TrainConfig(model=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                    max_position_embeddings=32, position_encoding="absolute"),
                         seq_len=8, batch_size=2, max_steps=1, warmup_steps=1)
    with pytest.raises(ValueError, match="position_encoding must be one of"):
        train(config, [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]], vocab_size=20, progress=False)
    with pytest.raises(ValueError, match="encoding must be one of"):
        lc.position_model_config("xpos", 100)
    with pytest.raises(ValueError, match="encodings must be names from"):
        lc.run_positions(None, encodings=("rope", "Rope"))


def test_contexts():
    splits = default_splits()
    a = lc.retrieval_contexts(splits.heldout_kb, 8, 3, seed=0)
    b = lc.retrieval_contexts(splits.heldout_kb, 8, 3, seed=0, random_values=True)
    assert [c.questions for c in a] == [c.questions for c in b]  # the same people and questions
    assert any(x.answers != y.answers for x, y in zip(a, b))
    assert all(c.context.startswith("Records of ") and c.n_records == 8 for c in a)
    kv = lc.kv_contexts(20, 2, seed=0)
    assert kv == lc.kv_contexts(20, 2, seed=0) and kv != lc.kv_contexts(20, 2, seed=1)
    keys = [q.split('"')[1] for q in kv[0].questions]
    assert len(set(keys)) == 20 and all(f'"{k}"' in kv[0].context for k in keys)
    with pytest.raises(ValueError, match="n_records"):
        lc.retrieval_contexts(splits.heldout_kb, 0, 1, seed=0)
    with pytest.raises(ValueError, match="exceeds the people"):
        lc.retrieval_contexts(splits.heldout_kb, 500, 1, seed=0)
    with pytest.raises(ValueError, match="key_chars"):
        lc.kv_contexts(3, 1, seed=0, key_chars=2)


def test_score_positions_is_greedy_decoding(main_model):
    # A record is correct exactly when greedy generation writes its answer: compare on people
    # the main model knows (it answers them from memory) and people it never saw.
    model, tokenizer = main_model
    splits = default_splits()
    flags, agree = [], 0
    for kb in (splits.train_kb, splits.heldout_kb):
        contexts = lc.retrieval_contexts(kb, 8, 1, seed=4, random_values=kb is splits.heldout_kb)
        scored = lc.score_positions(model, tokenizer, contexts)
        for c, row in zip(contexts, scored["correct"]):
            for q, answer, ok in zip(c.questions, c.answers, row):
                prompt = tokenizer.encode(c.context + q, add_bos=True)
                out = generate_ids(model, [prompt], max_new_tokens=4, temperature=0.0)
                agree += tokenizer.decode(out.tokens[0]).startswith(answer) == ok
                flags.append(ok)
    assert agree == len(flags) and any(flags) and not all(flags)


def test_accuracy_and_attention_summaries():
    summary = lc.accuracy_by_position([[True, False], [True, True], [True, False], [False, False]])
    assert summary["accuracy"] == [0.75, 0.25] and summary["n"] == 4
    assert summary["se"][0] == pytest.approx(math.sqrt(0.75 * 0.25 / 4))
    uniform = torch.ones(1, 1, 4, 4).tril()
    uniform = uniform / uniform.sum(-1, keepdim=True)
    assert float(lc.sink_share(uniform)) == pytest.approx((1 / 2 + 1 / 3 + 1 / 4) / 3)
    assert float(lc.span_share(uniform, 3, 1, 3)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="start"):
        lc.span_share(uniform, 2, 1, 4)
    with pytest.raises(ValueError, match="accuracy|equally long"):
        lc.accuracy_by_position([[True], [True, False]])


def test_recall_documents_and_spans(main_model):
    _, tokenizer = main_model
    keys, values = lc.recall_words(tokenizer)
    assert len(keys) >= 96 and not set(keys) & set(values)
    assert all(len(tokenizer.encode(w)) == 1 for w in keys + values)
    docs, masks = lc.training_documents(tokenizer, 10, seed=0, records=(2, 8))
    assert len(docs) == 10 and all(d[0] == tokenizer.bos_token_id and d[-1] == tokenizer.eos_token_id for d in docs)
    for d, m in zip(docs, masks):
        text = tokenizer.decode(d[1:-1])
        head, recall = text.split(lc.RECALL_HEADER)
        records = dict(line.split(" ")[1:] for line in head.split("\n")[1:-1])
        lines = recall.split("\n")
        assert len(lines) == len(records) in (2, 8)  # every record recalled, one line each
        assert dict(line.split(" ")[1:] for line in lines) == records
        # the loss counts the values (and the EOS): the token after each key in the recall list
        targets = [t for t, keep in zip(d, m) if keep]
        assert tokenizer.decode(targets[:-1]) == "".join(" " + line.split(" ")[2] for line in lines)
        assert targets[-1] == tokenizer.eos_token_id
    context = lc.recall_contexts(tokenizer, 6, 1, seed=2)[0]
    spans = lc.record_spans(tokenizer, context)
    ids = tokenizer.encode(context.context, add_bos=True)
    lines = context.context.splitlines(keepends=True)
    assert [tokenizer.decode(ids[a:b]) for a, b in spans] == lines[1:7]
    with pytest.raises(ValueError, match="n_records must be at most"):
        lc.recall_contexts(tokenizer, len(keys) + 1, 1, seed=0)


def test_a_short_run(main_model):
    _, tokenizer = main_model
    result = lc.run_positions(tokenizer, encodings=("nope", "alibi"), steps=2, batch_size=2, n_contexts=1,
                              train_records=(2, 3), eval_records=(2, 4), n_attention=1, log=lambda _: None)
    assert set(result["runs"]) == {"nope", "alibi"}
    for run in result["runs"].values():
        assert run["longest_trained_tokens"] < 30  # documents of 2 or 3 records
        assert [len(run["scores"][n]["accuracy"]) for n in ("2", "4")] == [2, 4]
        assert np.array(run["attention"]["4"]["to_record"]).shape == (4, 2)  # (records, layers)


def test_real_model_protocol_and_dtypes(main_model):
    # The SmolLM2 command's protocol, run with the main model standing in (it has RoPE too).
    model, tokenizer = main_model
    out = lc.run_smollm2(model, tokenizer, tokenizer, records=(4,), pairs=(3,), n_contexts=2, kv_contexts_n=2,
                         log=lambda _: None)
    assert [len(out["recall"]["4"]["correct"]), len(out["kv"]["3"]["correct"])] == [2, 2]
    assert np.array(out["sink"]["share"]).shape == (6, 8)  # layers x heads
    with pytest.raises(ValueError, match="n_contexts"):
        lc.run_smollm2(model, tokenizer, tokenizer, n_contexts=1)
    # Recomputing attention in float32 leaves a bfloat16 model's weights in bfloat16.
    half = small("rope").to(torch.bfloat16)
    lc.attention_weights(half, torch.tensor([[1, 2, 3, 4]]))
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}


def test_baselines_and_document_sinks(main_model):
    model, tokenizer = main_model
    # uniform_sink_share is what sink_share measures on a uniform head
    uniform = torch.ones(1, 1, 7, 7).tril()
    uniform = uniform / uniform.sum(-1, keepdim=True)
    assert lc.uniform_sink_share(7) == pytest.approx(float(lc.sink_share(uniform)))
    # two documents [BOS a b][BOS c]: queries a, b look at BOS 0, query c at BOS 3
    weights = torch.zeros(1, 1, 5, 5)
    weights[0, 0, 1, 0] = weights[0, 0, 2, 0] = 0.5
    weights[0, 0, 4, 3] = 1.0
    bos = tokenizer.bos_token_id
    assert float(lc.document_sink_share(weights, [bos, 7, 8, bos, 9], bos)) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="len\\(input_ids\\)"):
        lc.document_sink_share(weights, [bos, 7], bos)
    # copy_baseline counts repeated values: answers (x, x, y) -> (2/3 + 2/3 + 1/3) / 3
    context = lc.PositionContext("", ("a", "b", "c"), (" x", " x", " y"))
    assert lc.copy_baseline([context]) == pytest.approx(5 / 9)
    # default_guess_rate: the main model answers trained people from memory, never record 1's value
    contexts = lc.retrieval_contexts(default_splits().train_kb, 4, 2, seed=5, random_values=True)
    guess = lc.default_guess_rate(model, tokenizer, contexts, 1)
    assert 0 < guess["n"] <= 6 and 0.0 <= guess["rate"] <= 1.0
    with pytest.raises(ValueError, match="record"):
        lc.default_guess_rate(model, tokenizer, contexts, 5)
