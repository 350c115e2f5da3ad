"""Typed config sections owned by the data path: shard building and streaming."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from configs.schema import ConfigError
from shards.reasoning.annotate import ReasoningConfig


@dataclass
class SourceConfig:
    """Which dataset adapter reads the raw data (registry name) and its arguments."""

    adapter: str = "demo"
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class BuildConfig:
    """How ``rrg shards build`` preprocesses and packs studies."""

    image_size: int = 512  # longest side after resize, at build time (decode once, cheaply)
    image_format: Literal["png", "jpeg"] = "png"
    jpeg_quality: int = 95
    samples_per_shard: int = 250
    split_fractions: dict[str, float] = field(
        default_factory=lambda: {"train": 0.8, "validate": 0.1, "test": 0.1}
    )  # used only when the source gives no split; split is by patient
    dicom_window: Literal["voi", "minmax", "none"] = "voi"  # DICOM intensity window (shards/dicom.py)
    max_skip_fraction: float = 0.05  # unusable DICOM studies (counted, skipped) beyond this share fail the build
    num_tasks: int = 0  # parallel Ray tasks; 0 = one per CPU
    progress: bool = True

    def validate(self, key: str) -> None:
        if self.image_size < 16:
            raise ConfigError(f"{key}.image_size", "must be >= 16")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"{key}.jpeg_quality", "must be within 1..100")
        if self.samples_per_shard < 1:
            raise ConfigError(f"{key}.samples_per_shard", "must be >= 1")
        if self.dicom_window not in ("voi", "minmax", "none"):
            raise ConfigError(f"{key}.dicom_window", f"must be voi, minmax or none, got {self.dicom_window!r}")
        if not 0.0 <= self.max_skip_fraction <= 1.0:
            raise ConfigError(f"{key}.max_skip_fraction", "must be within [0, 1]")
        if self.split_fractions and abs(sum(self.split_fractions.values()) - 1.0) > 1e-6:
            raise ConfigError(f"{key}.split_fractions", "fractions must sum to 1")


@dataclass
class DataConfig:
    """Where the shards are and how the streaming reader serves them."""

    source: SourceConfig = field(default_factory=SourceConfig)
    build: BuildConfig = field(default_factory=BuildConfig)
    shards_dir: str = "data/demo/shards"
    train_split: str = "train"
    eval_split: str = "validate"
    loader_workers: int = 1  # torch DataLoader worker processes per rank
    shuffle_buffer: int = 256  # samples per shuffle block within a loader worker
    max_skip_fraction: float = 0.01  # stop once bad samples exceed this share of the planned ones
    verify: Literal["checksum", "size", "none"] = "checksum"  # shard check against the manifest
    prefetch_factor: int = 2
    reasoning: ReasoningConfig = field(default_factory=ReasoningConfig)  # rrg annotate reasoning (LVMed-R2)

    def validate(self, key: str = "data") -> None:
        self.build.validate(f"{key}.build")
        self.reasoning.validate(f"{key}.reasoning")
        if self.loader_workers < 0:
            raise ConfigError(f"{key}.loader_workers", "must be >= 0")
        if self.shuffle_buffer < 1:
            raise ConfigError(f"{key}.shuffle_buffer", "must be >= 1")
        if not 0.0 <= self.max_skip_fraction < 1.0:
            raise ConfigError(f"{key}.max_skip_fraction", "must be within [0, 1)")
