"""What is trained: a transform over a built model, never a forked model class.

``projector``: only the projector.  ``lora``: peft LoRA on the LM (``model.lm``
becomes a PeftModel), projector trainable, vision frozen.  ``full``: LM +
projector, and the vision tower when ``train_vision``.

Export helpers here are pure functions of the parameters (no merging in
place), so the trainer can call ``model.save_pretrained`` inside ZeRO-3's
``GatheredParameters``.  A LoRA export holds ``lm/`` (base LM, or the merged
LM with ``merge=True``) and ``lm_adapter/`` (peft), loadable with
``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(dir/"lm"), dir/"lm_adapter")``.
"""
from __future__ import annotations

import torch
from torch import nn



MODES = ("projector", "lora", "full")


def is_peft(module: nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # peft is part of the stack, but keep model code importable without it
        return False
    return isinstance(module, PeftModel)


def _set_trainable(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


def apply_tuning(model: nn.Module, train_cfg) -> nn.Module:
    """Freeze/unfreeze (and wrap the LM with LoRA) according to ``train_cfg.tuning``; returns ``model``."""
    mode = train_cfg.tuning
    if mode not in MODES:
        raise ValueError(f"unknown tuning mode {mode!r}; known: {list(MODES)}")
    if getattr(model, "rrg_tuning_applied", False):
        raise RuntimeError("apply_tuning was already applied to this model")
    _set_trainable(model, False)
    if mode == "lora":
        from peft import LoraConfig as PeftLoraConfig, get_peft_model

        lora = train_cfg.lora
        peft_cfg = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                  target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
        model.lm = get_peft_model(model.lm, peft_cfg)  # freezes the base LM, LoRA weights trainable
    elif mode == "full":
        _set_trainable(model.lm, True)
        if train_cfg.train_vision:
            for p in model.vision.feature_parameters():
                p.requires_grad_(True)
    _set_trainable(model.projector, True)
    model.rrg_tuning = mode
    model.rrg_tuning_applied = True
    return model


def trainable_summary(model: nn.Module) -> str:
    """One line per top-level part: trainable / total parameters."""
    lines, grand_t, grand_n = [], 0, 0
    for name, child in model.named_children():
        n = sum(p.numel() for p in child.parameters())
        t = sum(p.numel() for p in child.parameters() if p.requires_grad)
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
