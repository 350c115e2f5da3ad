"""What is trained: a transform over a built model, never a forked model class.

Each family names its trainable parameter groups per tuning mode
(``ModelFamily.trainable_groups``); :func:`apply_tuning` freezes everything else.
For the base family: ``projector`` trains the projector; ``lora`` wraps the LM with peft
LoRA (``model.lm`` becomes a PeftModel) and trains LoRA + projector; ``full`` trains
LM + projector, and the vision tower when ``train_vision``.

Export helpers here are pure functions of the parameters (no merging in
place), so the trainer can call ``model.save_pretrained`` inside ZeRO-3's
``GatheredParameters``.  A LoRA export holds ``lm/`` (base LM, or the merged
LM with ``merge=True``) and ``lm_adapter/`` (peft), loadable with
``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(dir/"lm"), dir/"lm_adapter")``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from modeling.config import LoraConfig

MODES = ("projector", "lora", "full")


@dataclass
class TuningSpec:
    """What one training stage trains: the mode, its LoRA settings, the groups it may restrict to."""

    mode: str = "full"
    lora: LoraConfig = field(default_factory=LoraConfig)
    train_vision: bool = False
    groups: list[str] = field(default_factory=list)  # empty: every group the family gives for ``mode``


def is_peft(module: nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # peft is part of the stack, but keep model code importable without it
        return False
    return isinstance(module, PeftModel)


def wrap_lora(module: nn.Module, lora: LoraConfig) -> nn.Module:
    """``module`` with peft LoRA on ``lora.target_modules`` (base frozen, LoRA matrices trainable)."""
    from peft import LoraConfig as PeftLoraConfig, get_peft_model

    peft_cfg = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                              target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(module, peft_cfg)


def lora_parameters(module: nn.Module) -> list[nn.Parameter]:
    return [p for n, p in module.named_parameters() if "lora_" in n]


def apply_tuning(model: nn.Module, family, spec: TuningSpec) -> list:
    """Freeze everything, let the family name (and wrap) what trains in ``spec.mode``, unfreeze that.

    Returns the family's :class:`modeling.family.ParamGroup` list (restricted to ``spec.groups``
    when given); ``model.rrg_tuning`` records the mode.
    """
    if spec.mode not in MODES:
        raise ValueError(f"unknown tuning mode {spec.mode!r}; known: {list(MODES)}")
    if getattr(model, "rrg_tuning_applied", False):
        raise RuntimeError("apply_tuning was already applied to this model")
    groups = family.trainable_groups(model, spec.mode, spec)
    names = [g.name for g in groups]
    if spec.groups:
        unknown = sorted(set(spec.groups) - set(names))
        if unknown:
            raise ValueError(f"trainable groups {unknown} are not among {family.name}'s groups for "
                             f"tuning '{spec.mode}': {names}")
        groups = [g for g in groups if g.name in spec.groups]
    for p in model.parameters():
        p.requires_grad_(False)
    for g in groups:
        for p in g.params:
            p.requires_grad_(True)
    model.rrg_tuning = spec.mode
    model.rrg_tuning_applied = True
    return groups


def plain_state_dict(model: nn.Module, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """``model``'s weights with every peft wrapper folded away (LoRA merged: W + B A * alpha/r).

    The hand-off between training stages: load it into a freshly built model before that
    stage's tuning is applied.  ``state`` is an already gathered ``model.state_dict()``.
    """
    from peft.tuners.lora import LoraLayer

    state = dict(model.state_dict() if state is None else state)
    peft_roots = [n for n, m in model.named_modules() if is_peft(m)]
    out: dict[str, torch.Tensor] = {}
    layers = {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    for key, value in state.items():
        if "lora_" in key:
            continue
        plain = key
        for root in peft_roots:
            if key.startswith(root + ".base_model.model."):
                plain = root + "." + key[len(root + ".base_model.model."):]
        layer_name = key[: -len(".base_layer.weight")] if key.endswith(".base_layer.weight") else None
        if layer_name in layers:
            value = value.clone()
            layer = layers[layer_name]
            for adapter in layer.active_adapters:
                a, b = state[f"{layer_name}.lora_A.{adapter}.weight"], state[f"{layer_name}.lora_B.{adapter}.weight"]
                value += (b.float() @ a.float()).to(value.dtype) * layer.scaling[adapter]
        out[plain.replace(".base_layer.", ".")] = value
    return out


def lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every peft LoRA layer in ``model``."""
    from peft.tuners.lora import LoraLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


def merge_lora_weight(layer: nn.Module) -> None:
    """``W += B A * alpha / r`` for every active adapter of one LoRA layer, in place, the product in fp32.

    The caller makes the three tensors whole first (ZeRO-3: gathered, rank 0 modifying).
    """
    base = layer.get_base_layer()
    weight = base.weight.data.float()
    for adapter in layer.active_adapters:
        if adapter in layer.lora_A:
            a, b = layer.lora_A[adapter].weight.data.float(), layer.lora_B[adapter].weight.data.float()
            weight = weight + (b @ a) * layer.scaling[adapter]
    base.weight.data.copy_(weight.to(base.weight.dtype))


def unwrap_peft(model: nn.Module) -> None:
    """Replace every peft-wrapped child of ``model`` (e.g. ``model.lm``) by its plain Hugging Face model, each
    LoRA layer by its base layer: module surgery only, no tensor is copied (ZeRO-3 partitions stay put).

    Merge the adapters first (:func:`merge_lora_weight`) to keep what they learned.
    """
    for name, child in list(model.named_children()):
        if not is_peft(child):
            continue
        inner = child.get_base_model()
        for layer_name, layer in lora_layers(inner):
            parent_name, _, leaf = layer_name.rpartition(".")
            parent = inner.get_submodule(parent_name) if parent_name else inner
            setattr(parent, leaf, layer.get_base_layer())
        setattr(model, name, inner)


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over a plain state dict (sorted names, dtype, shape, bytes): which weights a stage starts from."""
    import hashlib

    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().to("cpu").contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def trainable_summary(model: nn.Module) -> str:
    """One line per top-level part: trainable / total parameters."""
    lines, grand_t, grand_n = [], 0, 0
    def numel(p) -> int:  # a ZeRO-3 partitioned parameter holds a shard; ds_numel is its full size
        return int(getattr(p, "ds_numel", p.numel()))

    for name, child in model.named_children():
        n = sum(numel(p) for p in child.parameters())
        t = sum(numel(p) for p in child.parameters() if p.requires_grad)
        grand_t, grand_n = grand_t + t, grand_n + n
        lines.append(f"  {name:<10} {t:>12,} / {n:>12,} trainable")
    head = f"tuning={getattr(model, 'rrg_tuning', '?')}: {grand_t:,} / {grand_n:,} parameters trainable " \
           f"({100.0 * grand_t / max(grand_n, 1):.2f}%)"
    return "\n".join([head, *lines])


def lm_state_dict_for_export(lm: nn.Module, merge: bool) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """(HF model whose ``save_pretrained`` writes the LM, its plain state dict).

    For a PeftModel: the base model's keys (``.base_layer`` unwrapped, LoRA weights dropped),
    with ``W + delta`` for LoRA-wrapped layers when ``merge``.  Nothing is modified in place.
    """
    if not is_peft(lm):
        return lm, {k: v.detach() for k, v in lm.state_dict().items()}
    from peft.tuners.lora import LoraLayer

    inner = lm.get_base_model()
    merged: dict[str, torch.Tensor] = {}
    if merge:
        for name, mod in inner.named_modules():
            if isinstance(mod, LoraLayer):
                weight = mod.get_base_layer().weight.detach()
                for adapter in mod.active_adapters:
                    if adapter in mod.lora_A:
                        weight = weight + mod.get_delta_weight(adapter).detach().to(weight.dtype)
                merged[f"{name}.weight"] = weight
    state = {}
    for key, value in inner.state_dict().items():
        if "lora_" in key:
            continue
        plain = key.replace(".base_layer.", ".")
        state[plain] = merged.get(plain, value.detach())
    return inner, state
