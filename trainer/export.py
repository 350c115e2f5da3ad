"""Final export: a Hugging Face-format model directory that plain transformers / peft load.

Weights are gathered from the engine (one parameter at a time under ZeRO-3) on
rank 0, loaded into a clean, undistributed copy of the model, checked, and saved
with the family's ``save_pretrained`` (merged LoRA, or base + adapter).
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file


def check_adapter(state: dict[str, torch.Tensor], where: str) -> int:
    """LoRA weights must be present and non-empty (the ZeRO-3 empty-adapter trap, peft#453)."""
    lora = {k: v for k, v in state.items() if "lora_" in k}
    if not lora or any(v.numel() == 0 for v in lora.values()):
        raise RuntimeError(f"{where}: LoRA adapter is empty after gathering ({len(lora)} tensors); refusing to save it")
    if all(float(v.abs().sum()) == 0.0 for k, v in lora.items() if "lora_B" in k):
        raise RuntimeError(f"{where}: every lora_B matrix is zero: the adapter never trained or was not gathered")
    return sum(v.numel() for v in lora.values())


def save_trainable(strategy, path: Path, *, rank: int, tuning: str) -> None:
    """Collective: gather the trainable parameters (LoRA + projector) into one safetensors file."""
    state = strategy.full_state_dict(only_trainable=True)
    if rank == 0:
        if tuning == "lora":
            check_adapter(state, str(path))
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))


def export_model(strategy, family, tokenizer, cfg, out_dir: Path, *, rank: int) -> Path | None:
    """Collective: every rank calls; rank 0 writes ``out_dir`` and returns it."""
    state = strategy.full_state_dict()
    if rank != 0:
        return None
    from modeling.tuning import apply_tuning

    strategy.release_model_init_context()
    model = apply_tuning(family.build_model(tokenizer), cfg.train)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"export: state mismatch, missing={missing[:5]} unexpected={unexpected[:5]}")
    if cfg.train.tuning == "lora":
        check_adapter(state, "export")
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), merge=cfg.checkpoint.export == "merged")
    tokenizer.save_pretrained(str(out_dir / "tokenizer"))
    return out_dir
