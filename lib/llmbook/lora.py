"""LoRA: fine-tune a frozen model through low-rank updates W + (alpha / r) B A of its linear layers.

The chapter *What LoRA's rank does* (issue 15) explains this module; *Fine-tuning memory*
(:mod:`llmbook.memory`) counts what it saves.

Hu et al. 2021, "LoRA: low-rank adaptation of large language models" (ICLR 2022), section 4.1:
a frozen weight W (d_out, d_in) is used as W + ΔW with ΔW = s · B A, where A is (r, d_in),
B is (d_out, r) and s = alpha / r. Only A and B are trained: r (d_in + d_out) values per matrix
instead of d_in · d_out. A starts random and B at zero, so the adapted model *is* the base
model at step 0. Kalajdzievski 2023, "A rank stabilization scaling factor for fine-tuning with
LoRA" (rsLoRA), shows that s = alpha / r makes the update vanish as r grows and uses
s = alpha / sqrt(r) instead.

Everything here follows Hugging Face PEFT (``peft.LoraConfig`` with its defaults,
``init_lora_weights=True``), and ``tests/test_lora.py`` checks it against PEFT: the same seed
gives the same A, the same weights give the same logits and gradients, and adapters saved by
one load in the other (``adapter_config.json`` + ``adapter_model.safetensors``, PEFT's key names).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from llmbook.model import CausalLM

__all__ = ["LORA_TARGETS", "LoraConfig", "LoraLinear", "add_lora", "lora_layers", "delta_weights", "merge_lora",
           "unmerge_lora", "remove_lora", "save_adapter", "load_adapter", "trainable_parameter_count",
           "ADAPTER_CONFIG_NAME", "ADAPTER_WEIGHTS_NAME"]

#: The linear layers of a Llama-family decoder layer that LoRA can adapt (transformers' names);
#: :mod:`llmbook.memory` counts their parameters with the same tuple.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: File names PEFT's ``save_pretrained`` writes and ``PeftModel.from_pretrained`` reads.
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
#: PEFT's prefix: ``PeftModel.base_model`` (a LoraModel) whose ``.model`` is the transformers model.
_PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class LoraConfig:
    """What to adapt and how: PEFT's ``LoraConfig`` fields of the same names and defaults.

    ``r``: the rank, an integer >= 1 (and at most min(d_in, d_out) of every targeted layer,
    checked by :func:`add_lora`). ``lora_alpha``: a positive number; the update is scaled by
    :attr:`scaling` = ``lora_alpha / r`` (Hu et al. 2021), or ``lora_alpha / sqrt(r)`` with
    ``use_rslora`` (Kalajdzievski 2023). ``target_modules``: names from :data:`LORA_TARGETS`
    (default: the query and value projections, as Hu et al.). ``lora_dropout``: probability in
    [0, 1) of zeroing an input of A during training (PEFT applies ``nn.Dropout`` to x before A;
    so does :class:`LoraLinear`; no effect in ``eval()`` mode).

    Raises ``ValueError`` naming the field and its allowed values for anything else
    (``TypeError`` when ``use_rslora`` is not a bool). A list of target modules is accepted and
    stored as a tuple.
    """

    r: int
    lora_alpha: float = 16.0
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    use_rslora: bool = False
    lora_dropout: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"r must be an integer >= 1 (the rank of the update), got {self.r!r}")
        if (isinstance(self.lora_alpha, bool) or not isinstance(self.lora_alpha, (int, float))
                or not math.isfinite(self.lora_alpha) or self.lora_alpha <= 0):
            raise ValueError(f"lora_alpha must be a finite number > 0, got {self.lora_alpha!r}")
        targets = self.target_modules
        if isinstance(targets, str) or not isinstance(targets, (tuple, list)) or not targets:
            raise ValueError(f"target_modules must be a non-empty tuple of names from {list(LORA_TARGETS)}, "
                             f"got {targets!r}")
        unknown = [t for t in targets if t not in LORA_TARGETS]
        if unknown:
            raise ValueError(f"target_modules has unknown name(s) {unknown}; allowed: {list(LORA_TARGETS)}")
        if len(set(targets)) != len(targets):
            raise ValueError(f"target_modules repeats a name: {list(targets)}")
        object.__setattr__(self, "target_modules", tuple(targets))  # frozen: a list becomes a hashable tuple
        if not isinstance(self.use_rslora, bool):
            raise TypeError(f"use_rslora must be a bool, got {type(self.use_rslora).__name__}")
        if (isinstance(self.lora_dropout, bool) or not isinstance(self.lora_dropout, (int, float))
                or not 0.0 <= self.lora_dropout < 1.0):
            raise ValueError(f"lora_dropout must be a probability in [0, 1), got {self.lora_dropout!r}")

    @property
    def scaling(self) -> float:
        """s in ΔW = s · B A: ``lora_alpha / r``, or ``lora_alpha / sqrt(r)`` with ``use_rslora``."""
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)


class LoraLinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update: y = base(x) + s · B(A(dropout(x))).

    ``base`` (d_out, d_in) keeps its weights and gets ``requires_grad=False``; ``lora_A`` is
    ``nn.Linear(d_in, r, bias=False)`` and ``lora_B`` is ``nn.Linear(r, d_out, bias=False)``.
    Initialisation as PEFT's default (``init_lora_weights=True``, after Hu et al.'s ``loralib``):
    the two layers are built (each ``nn.Linear`` draws its default init from torch's global RNG),
    then A is re-drawn with ``kaiming_uniform_(a=sqrt(5))`` and B set to zero. The same RNG
    state therefore gives PEFT's A exactly, and ΔW = 0 at initialisation.

    The adapter is kept in float32 when the base is 16-bit (PEFT's ``autocast_adapter_dtype``):
    tiny updates of A and B would round away in bfloat16. The input is cast to the adapter's
    dtype and the sum back to the base output's dtype.
    """

    def __init__(self, base: nn.Linear, r: int, scaling: float, lora_dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"base must be a torch.nn.Linear, got {type(base).__name__}")
        if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= min(base.in_features, base.out_features):
            raise ValueError(f"r must be an integer in [1, {min(base.in_features, base.out_features)}] "
                             f"(min(d_in, d_out) of the layer), got {r!r}")
        self.base = base.requires_grad_(False)
        self.r = r
        self.scaling = float(scaling)
        self.lora_dropout = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        # Built on the CPU in float32 like PEFT (whose nn.Linear has no device argument), so the
        # draws do not depend on where the base lives; moved afterwards.
        self.lora_A = nn.Linear(base.in_features, r, bias=False, device="cpu", dtype=torch.float32)
        self.lora_B = nn.Linear(r, base.out_features, bias=False, device="cpu", dtype=torch.float32)
        self.reset_lora_parameters()
        weight = base.weight
        # PEFT moves the new layers to the base's device *and dtype*, then get_peft_model casts 16-bit
        # adapters back up to float32; the round trip rounds the initial A to the base's precision.
        # Doing the same keeps the seeded A identical to PEFT's on a bfloat16 or float16 base.
        self.lora_A.to(device=weight.device, dtype=weight.dtype)
        self.lora_B.to(device=weight.device, dtype=weight.dtype)
        if weight.dtype in (torch.float16, torch.bfloat16):
            self.lora_A.float()
            self.lora_B.float()
        self.merged = False
        self._merged_versions: tuple[int, int] | None = None

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @torch.no_grad()
    def reset_lora_parameters(self) -> None:
        """A ~ kaiming_uniform(a=sqrt(5)) (uniform in ±1/sqrt(d_in)), B = 0: PEFT's and loralib's init."""
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def delta_weight(self) -> torch.Tensor:
        """ΔW = s · B A, (d_out, d_in), in the adapter's dtype (float32 unless the base is float64).

        Differentiable (call it under ``torch.no_grad()`` or ``.detach()`` to inspect it); its rank
        is at most r.
        """
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., d_in) -> (..., d_out)
        result = self.base(x)
        if self.merged:  # ΔW is inside base.weight already
            return result
        a = self.lora_A.weight
        update = self.lora_B(self.lora_A(self.lora_dropout(x.to(a.dtype)))) * self.scaling
        return (result + update).to(result.dtype)  # PEFT's order: add, then cast back

    @torch.no_grad()
    def merge(self) -> None:
        """Add ΔW into ``base.weight`` so inference costs one matmul; undone by :meth:`unmerge`.

        Raises ``ValueError`` if already merged. Exact up to float rounding (in a 16-bit base the
        rounding of W + ΔW is that of the base's dtype).
        """
        if self.merged:
            raise ValueError("this LoRA layer is already merged; call unmerge() first")
        w = self.base.weight
        w.add_(self.delta_weight().to(w.dtype))
        self.merged = True
        # Unmerge subtracts ΔW recomputed from A and B; record their versions so that a change of
        # A or B while merged (an optimizer step, a load) is refused instead of corrupting W.
        self._merged_versions = (self.lora_A.weight._version, self.lora_B.weight._version)

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract ΔW from ``base.weight`` again. Raises ``ValueError`` if not merged, or if A or B
        were modified in place while merged (then ΔW is no longer the one that was added)."""
        if not self.merged:
            raise ValueError("this LoRA layer is not merged; there is nothing to unmerge")
        if self._merged_versions != (self.lora_A.weight._version, self.lora_B.weight._version):
            raise ValueError("lora_A or lora_B changed in place while merged, so the merged ΔW cannot be "
                             "subtracted exactly; reload the base weights instead")
        w = self.base.weight
        w.sub_(self.delta_weight().to(w.dtype))
        self.merged = False
        self._merged_versions = None

    def extra_repr(self) -> str:
        return f"r={self.r}, scaling={self.scaling:g}, merged={self.merged}"


# ============================================================================ whole models
def _check_model(model: object) -> CausalLM:
    if not isinstance(model, CausalLM):
        raise TypeError(f"model must be an llmbook.model.CausalLM, got {type(model).__name__}")
    return model


def _targets(model: CausalLM, target_modules: tuple[str, ...]) -> Iterator[tuple[str, nn.Module, str, nn.Linear]]:
    """(qualified name, parent, attribute, linear) of each targeted layer, in ``named_modules`` order
    (the order PEFT walks the model in, which fixes the order of RNG draws)."""
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in target_modules and name.startswith("model.layers.") and isinstance(module, nn.Linear):
            parent = model.get_submodule(name.rsplit(".", 1)[0])
            yield name, parent, leaf, module


def lora_layers(model: nn.Module) -> dict[str, LoraLinear]:
    """Qualified module name -> :class:`LoraLinear`, e.g. ``"model.layers.0.self_attn.q_proj"``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLinear)}


def add_lora(model: CausalLM, config: LoraConfig, *, seed: int | None = None) -> CausalLM:
    """Wrap the targeted linear layers of every decoder layer in :class:`LoraLinear`, in place.

    Freezes every parameter of the base model (embedding, norms, output layer included), so only
    the adapters train: :func:`trainable_parameter_count` then equals
    ``llmbook.memory.lora_parameter_count(model.config, r, target_modules)``.

    ``seed``: when given, A is drawn from a CPU RNG seeded with it, leaving torch's global RNG as it
    was; ``torch.manual_seed(seed)`` followed by PEFT's ``get_peft_model`` gives the same A.
    When None, torch's global RNG is used (and advanced), as PEFT does.

    Raises ``TypeError`` for a model that is not a ``CausalLM`` or a config that is not a
    :class:`LoraConfig`; ``ValueError`` if the model already has LoRA layers, or r exceeds
    min(d_in, d_out) of a targeted layer (a larger rank cannot raise the rank of ΔW). The model
    is unchanged when an error is raised. Returns ``model``.
    """
    _check_model(model)
    if not isinstance(config, LoraConfig):
        raise TypeError(f"config must be an llmbook.lora.LoraConfig, got {type(config).__name__}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    if lora_layers(model):
        raise ValueError("model already has LoRA layers; call remove_lora(model) before adding new ones")
    targets = list(_targets(model, config.target_modules))
    if not targets:
        raise ValueError(f"model has no linear layer named {list(config.target_modules)}")
    for name, _, _, linear in targets:
        limit = min(linear.in_features, linear.out_features)
        if config.r > limit:
            raise ValueError(f"r must be in [1, {limit}] for {name} (d_in={linear.in_features}, "
                             f"d_out={linear.out_features}): a larger rank cannot raise the rank of ΔW; "
                             f"got r={config.r}")
    model.requires_grad_(False)
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        for _, parent, leaf, linear in targets:
            setattr(parent, leaf, LoraLinear(linear, config.r, config.scaling, config.lora_dropout))
    model.lora_config = config  # what save_adapter writes
    return model


def remove_lora(model: CausalLM, *, merge: bool = False) -> CausalLM:
    """Put the base linear layers back, in place (PEFT's ``unload`` / ``merge_and_unload``).

    ``merge=True`` keeps the adaptation in the weights (merging layers not merged yet); with
    ``merge=False`` merged layers are unmerged first, so the base model comes back. Base
    parameters stay frozen. Raises ``ValueError`` if the model has no LoRA layers.
    """
    layers = lora_layers(_check_model(model))
    if not layers:
        raise ValueError("model has no LoRA layers to remove")
    for name, layer in layers.items():
        if merge and not layer.merged:
            layer.merge()
        elif not merge and layer.merged:
            layer.unmerge()
        parent, leaf = name.rsplit(".", 1)
        setattr(model.get_submodule(parent), leaf, layer.base)
    if hasattr(model, "lora_config"):
        del model.lora_config
    return model


def _require_lora(model: object) -> dict[str, LoraLinear]:
    layers = lora_layers(_check_model(model))
    if not layers:
        raise ValueError("model has no LoRA layers; call add_lora(model, config) first")
    return layers


def delta_weights(model: CausalLM) -> dict[str, torch.Tensor]:
    """Qualified module name -> ΔW = s · B A, (d_out, d_in), detached, float32, on the model's device."""
    with torch.no_grad():
        return {name: layer.delta_weight().detach().float() for name, layer in _require_lora(model).items()}


def merge_lora(model: CausalLM) -> None:
    """Merge every LoRA layer (:meth:`LoraLinear.merge`). Raises ``ValueError`` if any is merged already."""
    layers = _require_lora(model)
    merged = [name for name, layer in layers.items() if layer.merged]
    if merged:
        raise ValueError(f"LoRA layers already merged: {merged[:3]}{' ...' if len(merged) > 3 else ''}; "
                         "call unmerge_lora(model) first")
    for layer in layers.values():
        layer.merge()


def unmerge_lora(model: CausalLM) -> None:
    """Unmerge every LoRA layer (:meth:`LoraLinear.unmerge`). Raises ``ValueError`` if any is not merged."""
    layers = _require_lora(model)
    unmerged = [name for name, layer in layers.items() if not layer.merged]
    if unmerged:
        raise ValueError(f"LoRA layers not merged: {unmerged[:3]}{' ...' if len(unmerged) > 3 else ''}; "
                         "call merge_lora(model) first")
    for layer in layers.values():
        layer.unmerge()


def trainable_parameter_count(model: nn.Module) -> int:
    """Number of distinct parameters with ``requires_grad`` (a shared tensor counts once)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    seen: dict[int, int] = {id(p): p.numel() for p in model.parameters() if p.requires_grad}
    return sum(seen.values())


# ============================================================================ PEFT files
def _peft_key(name: str, which: str) -> str:
    """PEFT's safetensors key of a module's lora_A/lora_B weight (the adapter name is left out)."""
    return f"{_PEFT_PREFIX}{name}.{which}.weight"


def save_adapter(model: CausalLM, directory: str | os.PathLike[str], *,
                 base_model_name_or_path: str | None = None) -> Path:
    """Write the adapter in PEFT's layout: ``adapter_config.json`` + ``adapter_model.safetensors``.

    Keys as PEFT writes them, e.g. ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``
    (the model's module names are transformers' Llama/Qwen2 names), so
    ``peft.PeftModel.from_pretrained(transformers_model, directory)`` loads it. Only A and B are
    written (unmerged values; merging changes the base, not the adapter). Returns the directory.
    Raises ``ValueError`` if the model has no LoRA layers.
    """
    layers = _require_lora(model)
    config: LoraConfig = model.lora_config
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, layer in layers.items():
        tensors[_peft_key(name, "lora_A")] = layer.lora_A.weight.detach().contiguous().cpu()
        tensors[_peft_key(name, "lora_B")] = layer.lora_B.weight.detach().contiguous().cpu()
    save_file(tensors, str(out / ADAPTER_WEIGHTS_NAME), metadata={"format": "pt"})
    peft_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": config.r,
        "lora_alpha": config.lora_alpha,
        "target_modules": list(config.target_modules),
        "use_rslora": config.use_rslora,
        "lora_dropout": config.lora_dropout,
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "use_dora": False,
    }
    (out / ADAPTER_CONFIG_NAME).write_text(json.dumps(peft_config, indent=2) + "\n", encoding="utf-8")
    return out


def _config_from_peft(raw: dict, path: Path) -> LoraConfig:
    """A :class:`LoraConfig` from PEFT's adapter_config.json; refuses what llmbook does not implement."""
    if raw.get("peft_type") != "LORA":
        raise ValueError(f"{path}: peft_type must be 'LORA', got {raw.get('peft_type')!r}")
    # Settings that change what the adapter computes: refused rather than silently ignored.
    plain = {"bias": "none", "fan_in_fan_out": False, "use_dora": False, "modules_to_save": None,
             "layers_to_transform": None, "rank_pattern": {}, "alpha_pattern": {}, "lora_bias": False,
             "target_parameters": None, "trainable_token_indices": None, "layer_replication": None}
    for key, allowed in plain.items():
        value = raw.get(key, allowed)
        if value != allowed and not (allowed is None and value in ([], {})) and not (allowed == {} and value is None):
            raise ValueError(f"{path}: {key}={value!r} is not supported by llmbook.lora (allowed: {allowed!r})")
    targets = raw.get("target_modules")
    if isinstance(targets, str) or not isinstance(targets, list):
        raise ValueError(f"{path}: target_modules must be a list of names from {list(LORA_TARGETS)}, got {targets!r}")
    unknown = sorted(set(targets) - set(LORA_TARGETS))
    if unknown:
        raise ValueError(f"{path}: target_modules has name(s) {unknown} that llmbook.lora cannot adapt; "
                         f"allowed: {list(LORA_TARGETS)}")
    ordered = tuple(t for t in LORA_TARGETS if t in targets)  # PEFT stores a set: fix the order
    return LoraConfig(r=raw.get("r"), lora_alpha=raw.get("lora_alpha", 8), target_modules=ordered,
                      use_rslora=bool(raw.get("use_rslora", False)), lora_dropout=raw.get("lora_dropout", 0.0))


def load_adapter(model: CausalLM, directory: str | os.PathLike[str], *, seed: int | None = None) -> CausalLM:
    """Add LoRA layers as ``directory/adapter_config.json`` says and load their weights, in place.

    Reads PEFT's layout (from ``PeftModel.save_pretrained`` or :func:`save_adapter`). The adapter
    must fit this model: every targeted module must have weights in the file, every key of the
    file must name a targeted module of this model, and A must be (r, d_in), B (d_out, r) of
    that module. Otherwise ``ValueError`` naming the module and both shapes (the adapter was made
    for a different base model); the model is unchanged then. Also ``ValueError`` for a missing
    file or a PEFT setting llmbook does not implement (DoRA, biases, per-layer ranks, ...).
    ``seed`` only affects the initial A, which the file's weights then replace. Returns ``model``.
    """
    if lora_layers(_check_model(model)):
        raise ValueError("model already has LoRA layers; call remove_lora(model) before loading an adapter")
    path = Path(directory)
    config_file, weights_file = path / ADAPTER_CONFIG_NAME, path / ADAPTER_WEIGHTS_NAME
    for f in (config_file, weights_file):
        if not f.is_file():
            raise ValueError(f"directory must hold a PEFT adapter ({ADAPTER_CONFIG_NAME} and "
                             f"{ADAPTER_WEIGHTS_NAME}); {f} does not exist")
    config = _config_from_peft(json.loads(config_file.read_text(encoding="utf-8")), config_file)
    tensors = load_file(str(weights_file))
    targets = {name: linear for name, _, _, linear in _targets(model, config.target_modules)}
    expected = {}
    for name, linear in targets.items():
        expected[_peft_key(name, "lora_A")] = (name, (config.r, linear.in_features))
        expected[_peft_key(name, "lora_B")] = (name, (linear.out_features, config.r))
    # Check everything before touching the model; a shape that differs says most about a wrong base.
    for key, (name, shape) in expected.items():
        got = tuple(tensors[key].shape) if key in tensors else shape
        if got != shape:
            raise ValueError(f"{weights_file}: {key.rsplit('.', 2)[-2]} of module {name!r} has shape {got} in the "
                             f"adapter but {shape} in this model: it was made for a different base model")
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise ValueError(f"{weights_file}: adapter has weights for {extra[0]!r} ({len(extra)} such key(s)), "
                         "which is not a targeted module of this model: it was made for a different base model")
    missing = [key for key in expected if key not in tensors]
    if missing:
        raise ValueError(f"{weights_file}: adapter has no weights for module {expected[missing[0]][0]!r} "
                         f"(key {missing[0]!r}, {len(missing)} missing), which its config targets in this model")
    add_lora(model, config, seed=seed)
    with torch.no_grad():
        for name, layer in lora_layers(model).items():
            layer.lora_A.weight.copy_(tensors[_peft_key(name, "lora_A")])
            layer.lora_B.weight.copy_(tensors[_peft_key(name, "lora_B")])
    return model
