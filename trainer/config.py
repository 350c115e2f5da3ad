"""Typed config sections owned by the trainer, and the run config that composes every section.

``load_config("configs/demo.yaml", ["train.lr=1e-4"])`` returns a validated :class:`RunConfig`;
anything wrong raises :class:`ConfigError` naming the key.  A YAML file may start from another
with ``base: other.yaml`` (relative to it).  The ``cluster`` section (where and on how many
workers a run executes) is plain data read by the trainer (world size, devices) and by the
cluster backends that launch it.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from configs.atomic import atomic_write_text
from configs.cluster import ClusterConfig
from configs.schema import ConfigError, apply_overrides, deep_merge, from_dict, read_yaml_chain, to_dict
from modeling.config import LoraConfig, ModelConfig, PackingConfig
from shards.config import DataConfig
from trainer.evaluation.metric_config import (BertScoreConfig, GreenConfig, LlavaRadBertScoreConfig,
                                              NarrativeBiasConfig, RadGraphConfig, SembConfig, llava_rad_bertscore)


@dataclass
class StageConfig:
    """One stage of a multi-stage run: what trains, on which target, how fast, for how long."""

    name: str = "main"
    tuning: Literal["projector", "lora", "full"] = "full"
    groups: list[str] = field(default_factory=list)  # restrict to these of the family's groups (empty: all)
    lr: Optional[float] = None  # default train.lr
    steps: int = 100
    target: str = "report"  # the text trained on: report, or an annotation overlay (reasoning, reflection, ...)
    train_vision: bool = False

    def spec(self, lora: LoraConfig):
        from modeling.tuning import TuningSpec

        return TuningSpec(self.tuning, lora, self.train_vision, list(self.groups))


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
    packing: PackingConfig = field(default_factory=PackingConfig)  # several studies per LM row (modeling/packing.py)
    # several stages run as one job (each its own tuning, groups, lr, steps, target); when given,
    # max_steps becomes their sum and tuning/train_vision/lr above are only the stages' defaults
    stages: list[StageConfig] = field(default_factory=list)

    def resolved_stages(self) -> list[StageConfig]:
        if not self.stages:
            return [StageConfig("main", self.tuning, [], self.lr, self.max_steps, "report", self.train_vision)]
        return [StageConfig(s.name, s.tuning, list(s.groups), s.lr if s.lr is not None else self.lr, s.steps,
                            s.target, s.train_vision) for s in self.stages]

    def stage_at(self, step: int) -> int:
        """Index of the stage that optimizer step ``step + 1`` belongs to (the last one past the end)."""
        end = 0
        for i, st in enumerate(self.resolved_stages()):
            end += st.steps
            if step < end:
                return i
        return len(self.resolved_stages()) - 1

    def stage_bounds(self, index: int) -> tuple[int, int]:
        stages = self.resolved_stages()
        start = sum(st.steps for st in stages[:index])
        return start, start + stages[index].steps
    max_nonfinite_steps: int = 3  # stop after this many NaN/inf loss or grad-norm checks in a row

    def validate(self, key: str = "train") -> None:
        self.packing.validate(f"{key}.packing")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"{key}.zero_stage", f"must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.offload_params and self.zero_stage != 3:
            raise ConfigError(f"{key}.offload_params", "parameter offload needs zero_stage 3")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ConfigError(f"{key}.offload_optimizer", "optimizer offload needs zero_stage >= 1")
        for name in ("micro_batch_size", "grad_accum", "max_steps", "max_nonfinite_steps"):
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
        names = [st.name for st in self.stages]
        if len(set(names)) != len(names):
            raise ConfigError(f"{key}.stages", f"stage names must be unique, got {names}")
        for i, st in enumerate(self.stages):
            if st.steps < 1:
                raise ConfigError(f"{key}.stages[{i}].steps", "must be >= 1")
            if st.lr is not None and not st.lr > 0:
                raise ConfigError(f"{key}.stages[{i}].lr", "must be > 0")
            if st.train_vision and st.tuning != "full":
                raise ConfigError(f"{key}.stages[{i}].train_vision", "only with tuning: full")
        if self.stages:
            self.max_steps = sum(st.steps for st in self.stages)


@dataclass
class CheckpointConfig:
    dir: Optional[str] = None  # default <output_dir>/checkpoints
    every_steps: int = 100
    keep_last: int = 2
    resume: str = "auto"  # auto | none | path to a checkpoint
    export: Literal["merged", "adapter", "none"] = "merged"  # final Hugging Face export
    overwrite: Optional[Literal["move", "delete"]] = None  # --overwrite: clear an old run's checkpoints
    trust: bool = False  # --trust-checkpoint: load without hash checks and with full pickle (can run code)
    # one run per output_dir (trainer/runlock.py): a lock another host has not touched for lock_stale_s is
    # stale and taken over; a second run waits lock_wait_s for the first to finish, then refuses
    lock_stale_s: float = 120.0
    lock_wait_s: float = 0.0

    def validate(self, key: str = "checkpoint") -> None:
        if self.every_steps < 1:
            raise ConfigError(f"{key}.every_steps", "must be >= 1")
        if self.keep_last < 1:
            raise ConfigError(f"{key}.keep_last", "must be >= 1")
        if not 0 < self.lock_stale_s < float("inf"):
            raise ConfigError(f"{key}.lock_stale_s", f"must be a finite number of seconds > 0, got {self.lock_stale_s}")
        if not 0 <= self.lock_wait_s < float("inf"):
            raise ConfigError(f"{key}.lock_wait_s", f"must be a finite number of seconds >= 0, got {self.lock_wait_s}")


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
    batch_rows: bool = False  # each rank appends every micro-batch's (key, topic) rows to batch_rows.rank<r>.jsonl
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def validate(self, key: str = "logging") -> None:
        if self.every_steps < 1:
            raise ConfigError(f"{key}.every_steps", f"must be >= 1, got {self.every_steps}")


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
    meteor_language: str = "en"  # METEOR's -l; "es" for Spanish (PadChest) reports
    # registry name (shards/labeling): rrg (English rules), rrg_es (Spanish PadChest rules), chexbert
    # (labeler_args: {checkpoint: FILE, tokenizer: DIR}); labels the model's and both baselines' reports
    labeler: str = "rrg"
    labeler_args: dict[str, Any] = field(default_factory=dict)
    family_options: dict[str, Any] = field(default_factory=dict)  # generation switches a family reads
    # model-based metrics (trainer/evaluation/metric_config.py): each from a local directory, unset = not computed
    radgraph: RadGraphConfig = field(default_factory=RadGraphConfig)
    bertscore: BertScoreConfig = field(default_factory=BertScoreConfig)  # ReXrank: distilroberta-base L5, rescaled
    bertscore_llava_rad: LlavaRadBertScoreConfig = field(default_factory=llava_rad_bertscore)  # roberta-large L17, raw
    semb: SembConfig = field(default_factory=SembConfig)
    green: GreenConfig = field(default_factory=GreenConfig)
    narrative_bias: NarrativeBiasConfig = field(default_factory=NarrativeBiasConfig)

    def validate(self, key: str = "eval") -> None:
        from shards.labeling import LABELERS

        LABELERS.get(self.labeler, f"{key}.labeler")  # unknown names fail at load, naming the known ones
        for name in ("bootstrap", "subset", "batch_size", "max_new_tokens", "num_beams"):
            if getattr(self, name) < (0 if name == "bootstrap" else 1):
                raise ConfigError(f"{key}.{name}", "must be >= 1" if name != "bootstrap" else "must be >= 0")
        self.narrative_bias.validate(f"{key}.narrative_bias")


def _check_finite(value: Any, key: str) -> None:
    """No NaN or infinity anywhere in a config (e.g. ``train.lr=1e999``)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(key, f"must be a finite number, got {value}")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, f"{key}.{k}" if key else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_finite(v, f"{key}[{i}]")


REMOTE_OUTPUT_DIR = ("must be a local or shared directory (it holds the run's logs, tokenizer, STOP file and "
                     "Ray state); keep checkpoints on object storage with checkpoint.dir=s3://...")


@dataclass
class RunConfig:
    name: str = "run"
    seed: int = 1234
    output_dir: str = "runs/run"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def validate(self) -> "RunConfig":
        if "://" in self.output_dir:  # checked here so that no backend makes a local dir named "s3:"
            raise ConfigError("output_dir", f"{self.output_dir}: {REMOTE_OUTPUT_DIR}")
        self.data.validate("data")
        self.model.validate("model")
        self.train.validate("train")
        self.checkpoint.validate("checkpoint")
        self.logging.validate("logging")
        self.eval.validate("eval")
        self.cluster.validate("cluster")
        _check_finite(self.to_dict(), "")
        from modeling.checks import check_checkpoints, check_family

        check_checkpoints(self.model, "model")  # the files on disk, then the family modules: the slow checks last
        check_family(self.model, packing=self.train.packing.enabled, eval_options=self.eval.family_options)
        return self

    @property
    def checkpoint_dir(self) -> str:
        """Local checkpoint dir; an s3:// ``checkpoint.dir`` is staged here and mirrored (trainer/worker.py)."""
        if self.checkpoint.dir and "://" not in self.checkpoint.dir:
            return self.checkpoint.dir
        return os.path.join(self.output_dir, "checkpoints")

    def to_dict(self) -> dict:
        return to_dict(self)

    def dump(self, path: str | os.PathLike) -> None:
        """Write the fully resolved config (every default spelled out) next to an output."""
        import yaml

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

SHIPPED_CONFIGS = Path(__file__).resolve().parent.parent / "configs"  # in the checkout and in an installed wheel
DEFAULT_CONFIG = SHIPPED_CONFIGS / "demo.yaml"


def config_path(path: str | os.PathLike) -> Path:
    """A config file: ``path`` where it exists, else the shipped config it names (``demo``, ``demo.yaml``,
    ``configs/demo.yaml``, ``datasets/padchest``), so that an installed rrg runs its configs from any directory."""
    given = Path(path)
    if given.is_file() or given.is_absolute():
        return given
    parts = given.parts[1:] if given.parts[:1] == ("configs",) else given.parts
    shipped = SHIPPED_CONFIGS.joinpath(*parts) if parts else SHIPPED_CONFIGS
    if not shipped.suffix:
        shipped = shipped.with_suffix(".yaml")
    if shipped.is_file():
        return shipped
    names = sorted(str(f.relative_to(SHIPPED_CONFIGS).with_suffix("")) for f in SHIPPED_CONFIGS.rglob("*.yaml"))
    raise ConfigError("", f"config file not found: {path} (nor a shipped config: {', '.join(names)})")


def _merge_base(base: dict, child: dict) -> dict:
    """``base:`` merge, except that a file naming another ``data.source.adapter`` than its base does not
    inherit the base's adapter args (``base: demo.yaml`` must not hand ``num_studies`` to a DICOM adapter),
    and one naming another ``model.family`` does not inherit the base's family-typed sections
    (``model.options``, ``eval.family_options``): a baseline run of another family on the same data."""
    adapter = ((child.get("data") or {}).get("source") or {}).get("adapter")
    source = (base.get("data") or {}).get("source") or {}
    if adapter is not None and adapter != source.get("adapter") and "args" in source:
        base = {**base, "data": {**base["data"], "source": {k: v for k, v in source.items() if k != "args"}}}
    family = (child.get("model") or {}).get("family")
    if family is not None and family != (base.get("model") or {}).get("family"):
        for section, key in (("model", "options"), ("eval", "family_options")):
            if key in (base.get(section) or {}):
                base = {**base, section: {k: v for k, v in base[section].items() if k != key}}
    return deep_merge(base, child)


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> RunConfig:
    data = read_yaml_chain(config_path(path) if path else DEFAULT_CONFIG, merge=_merge_base)
    data = apply_overrides(data, overrides or [])
    return from_dict(RunConfig, data).validate()


def config_from_dict(data: dict) -> RunConfig:
    return from_dict(RunConfig, data).validate()
