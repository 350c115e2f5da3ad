"""Final export: a Hugging Face-format model directory that plain transformers / peft load.

Weights are gathered from the engine (one parameter at a time under ZeRO-3) on
rank 0, loaded into a clean, undistributed copy of the model, checked, and saved
with the family's ``save_pretrained`` (merged LoRA, or base + adapter).

A training run's final export is published atomically (:func:`staged_dir`): written into
``.<name>.tmp-<pid>`` beside the target, then swapped in, so a crash mid-export leaves the previous
export (or none), never half of one; the next run removes the staging leftovers
(:func:`remove_staging_leftovers`).
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

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


def write_export(family, tokenizer, spec, state: dict[str, torch.Tensor], out_dir: Path, *,
                 merge: bool, where: str, shards_dir: str | None = None) -> Path:
    """Load a full state dict into a clean, undistributed model copy, check it, and save it.

    ``spec`` (a :class:`modeling.tuning.TuningSpec`) is the tuning of the stage that wrote ``state``;
    the family's dataset assets are copied from ``shards_dir`` into ``out_dir/assets/``.
    """
    from modeling.tuning import apply_tuning
    from shards.manifest import load_manifest
    from shards.sidecars import copy_assets

    assets = load_manifest(shards_dir).assets if shards_dir and family.asset_names else {}
    model = family.build_model(tokenizer, assets)
    apply_tuning(model, family, spec)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("inv_freq")]  # recomputed buffers
    if missing or unexpected:
        raise RuntimeError(f"{where}: state does not fit the model: missing={missing[:5]} unexpected={unexpected[:5]}")
    if spec.mode == "lora":
        check_adapter(state, where)
    out_dir.mkdir(parents=True, exist_ok=True)
    family.save_pretrained(model, str(out_dir), merge=merge)  # writes tokenizer/ too
    if family.asset_names:
        copy_assets(shards_dir, list(family.asset_names), out_dir)
    return out_dir


def write_run_config(cfg, out_dir: Path) -> None:
    """The resolved run config beside the weights: ``rrg generate`` preprocesses as the shards were built."""
    import yaml

    (Path(out_dir) / RUN_CONFIG).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


_STAGING = ".tmp-"
RUN_CONFIG = "rrg_run.yaml"  # the run config inside an export (``rrg generate`` reads it)


@contextlib.contextmanager
def staged_dir(out_dir: Path) -> Iterator[Path]:
    """Yield a staging dir beside ``out_dir``; on success it replaces ``out_dir`` (the old one, if
    any, is removed only after the swap); on failure it is removed."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}{_STAGING}{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    from configs.atomic import fsync_dir

    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    fsync_dir(out_dir.parent)
    shutil.rmtree(old, ignore_errors=True)


def remove_staging_leftovers(out_dir: Path) -> list[Path]:
    """Staging and swap dirs a crashed export left beside ``out_dir`` (call with the run lock held)."""
    out_dir = Path(out_dir)
    found = sorted(out_dir.parent.glob(f".{out_dir.name}{_STAGING}*")) + \
        sorted(out_dir.parent.glob(f".{out_dir.name}.old-*"))
    for p in found:
        shutil.rmtree(p, ignore_errors=True)
    return found


def export_model(strategy, family, tokenizer, cfg, out_dir: Path, *, rank: int, spec) -> Path | None:
    """Collective: every rank calls; rank 0 writes ``out_dir`` (atomically) and returns it."""
    from trainer import chaos

    state = strategy.full_state_dict()
    if rank != 0:
        return None
    strategy.release_model_init_context()
    with staged_dir(out_dir) as tmp:
        write_export(family, tokenizer, spec, state, tmp, merge=cfg.checkpoint.export == "merged",
                     where="export", shards_dir=cfg.data.shards_dir)
        write_run_config(cfg, tmp)
        chaos.point("export", cfg.train.max_steps, rank)
    return out_dir


def export_checkpoint(cfg, point, out_dir: Path) -> Path:
    """Consolidate an rrg checkpoint (any ZeRO stage, any world size) into an export directory.

    Runs in one process without a process group: DeepSpeed's zero_to_fp32 rebuilds
    the full fp32 state from the shards.
    """
    import json

    from trainer.config import config_from_dict
    from modeling.family import build_family
    from trainer.checkpoint import DS_TAG

    run_cfg = config_from_dict(point.meta["config"]) if "config" in point.meta else cfg
    family = build_family(run_cfg.model)
    tok_dir = Path(run_cfg.output_dir) / "tokenizer"
    if not tok_dir.is_dir():
        tok_dir = Path(cfg.output_dir) / "tokenizer"
    tokenizer = family.tokenizer(None, save_dir=str(tok_dir))
    from trainer.strategy import DeepSpeedStrategy

    # weights-only unpickling unless --trust-checkpoint
    state = DeepSpeedStrategy.consolidated_state_dict(str(point.path), DS_TAG, trusted=cfg.checkpoint.trust)
    stage = run_cfg.train.resolved_stages()[int(point.meta.get("stage", 0))]
    write_export(family, tokenizer, stage.spec(run_cfg.train.lora), state, out_dir, merge=True,
                 where=str(point.path), shards_dir=run_cfg.data.shards_dir)
    write_run_config(run_cfg, out_dir)
    (out_dir / "source.json").write_text(json.dumps({"checkpoint": str(point.path), "step": point.step}))
    return out_dir
