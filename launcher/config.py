"""The run configuration: one typed section per component, loaded from YAML + overrides.

``load_config("configs/demo.yaml", ["train.lr=1e-4"])`` returns a validated
:class:`RunConfig`; anything wrong raises :class:`ConfigError` naming the key.
A YAML file may start from another with ``base: other.yaml`` (relative to it).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cluster.config import ClusterConfig
from configs.schema import ConfigError, apply_overrides, deep_merge, from_dict, to_dict
from modeling.config import ModelConfig
from shards.config import DataConfig
from trainer.config import CheckpointConfig, EvalConfig, LoggingConfig, TrainConfig

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"


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
        self.data.validate("data")
        self.model.validate("model")
        self.train.validate("train")
        self.checkpoint.validate("checkpoint")
        self.cluster.validate("cluster")
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
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        os.replace(tmp, path)


def _read_yaml(path: Path, seen: tuple = ()) -> dict:
    if not path.is_file():
        raise ConfigError("", f"config file not found: {path}")
    if path in seen:
        raise ConfigError("base", f"circular base chain through {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError("", f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError("", f"{path} must hold a mapping at the top level")
    base = data.pop("base", None)
    if base is not None:
        data = deep_merge(_read_yaml((path.parent / base).resolve(), seen + (path,)), data)
    return data


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> RunConfig:
    data = _read_yaml(Path(path) if path else DEFAULT_CONFIG)
    data = apply_overrides(data, overrides or [])
    return from_dict(RunConfig, data).validate()


def config_from_dict(data: dict) -> RunConfig:
    return from_dict(RunConfig, data).validate()
