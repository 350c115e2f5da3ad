"""Typed config sections owned by the trainer: optimisation, checkpoints, logging, evaluation."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from configs.schema import ConfigError


@dataclass
class LoraConfig:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class TrainConfig:
    # what is trained: projector only; projector + LoRA on the LM; everything but the vision tower
    tuning: Literal["projector", "lora", "full"] = "full"
    train_vision: bool = False  # also unfreeze the vision encoder (full tuning only)
    lora: LoraConfig = field(default_factory=LoraConfig)
    zero_stage: int = 2
    offload_optimizer: bool = False
    offload_params: bool = False
    precision: Literal["fp32", "bf16"] = "fp32"
    micro_batch_size: int = 8  # per rank
    grad_accum: int = 1
    max_steps: int = 300  # optimizer steps
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float = 1.0
    activation_checkpointing: bool = False
    deepspeed_overrides: dict[str, Any] = field(default_factory=dict)  # merged last into the generated DS config

    def validate(self, key: str = "train") -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"{key}.zero_stage", f"must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.offload_params and self.zero_stage != 3:
            raise ConfigError(f"{key}.offload_params", "parameter offload needs zero_stage 3")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ConfigError(f"{key}.offload_optimizer", "optimizer offload needs zero_stage >= 1")
        for name in ("micro_batch_size", "grad_accum", "max_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{key}.{name}", "must be >= 1")
        if self.lr <= 0:
            raise ConfigError(f"{key}.lr", "must be > 0")
        if self.warmup_steps < 0:
            raise ConfigError(f"{key}.warmup_steps", "must be >= 0")
        if len(self.betas) != 2:
            raise ConfigError(f"{key}.betas", "needs two values")
        if self.train_vision and self.tuning != "full":
            raise ConfigError(f"{key}.train_vision", "only with tuning: full")


@dataclass
class CheckpointConfig:
    dir: Optional[str] = None  # default <output_dir>/checkpoints
    every_steps: int = 100
    keep_last: int = 2
    resume: str = "auto"  # auto | none | path to a checkpoint
    export: Literal["merged", "adapter", "none"] = "merged"  # final Hugging Face export

    def validate(self, key: str = "checkpoint") -> None:
        if self.every_steps < 1:
            raise ConfigError(f"{key}.every_steps", "must be >= 1")
        if self.keep_last < 1:
            raise ConfigError(f"{key}.keep_last", "must be >= 1")


@dataclass
class WandbConfig:
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"  # auto: online with a key, else offline
    project: str = "rrg"
    entity: Optional[str] = None
    log_text: bool = False  # reports may hold patient data: never sent unless this is true


@dataclass
class LoggingConfig:
    every_steps: int = 10
    progress_bar: bool = True
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class EvalConfig:
    split: str = "test"
    every_steps: int = 0  # in-training evaluation; 0 = off
    subset: int = 64  # studies in the fixed in-training validation subset
    max_new_tokens: int = 120
    num_beams: int = 1
    batch_size: int = 16
    bootstrap: int = 1000  # resamples for the 95% intervals; 0 = none
    meteor: bool = True  # METEOR through the reference jar (needs java; says so plainly when absent)
    # registry name (shards/labeling): rrg (English rules), rrg_es (Spanish PadChest rules), chexbert
    # (labeler_args: {checkpoint: FILE, tokenizer: DIR}); labels the model's and both baselines' reports
    labeler: str = "rrg"
    labeler_args: dict[str, Any] = field(default_factory=dict)

    def validate(self, key: str = "eval") -> None:
        from shards.labeling import LABELERS

        LABELERS.get(self.labeler, f"{key}.labeler")  # unknown names fail at load, naming the known ones
        for name in ("bootstrap", "subset", "batch_size", "max_new_tokens", "num_beams"):
            if getattr(self, name) < (0 if name == "bootstrap" else 1):
                raise ConfigError(f"{key}.{name}", "must be >= 1" if name != "bootstrap" else "must be >= 0")
