"""Typed config sections owned by the data path: shard building and streaming."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from configs.schema import ConfigError
from shards.kg_config import KGConfig
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
    num_tasks: int = 0  # parallel Ray tasks; 0 = one per CPU
    # unusable studies (no usable view, missing report or image, ...) are counted and skipped; beyond
    # this share of the source's studies the build stops (build_summary.json says why)
    max_skip_fraction: float = 0.2
    progress: bool = True
    lock_wait_s: float = 0.0  # another build holds the directory: wait this long, then refuse
    # images whose header promises more pixels are skipped (image_too_large) before decoding: a build
    # task's memory is bounded by this, not by what files claim (shards/imageio.py)
    max_image_pixels: int = 50_000_000

    def validate(self, key: str) -> None:
        if self.image_size < 16:
            raise ConfigError(f"{key}.image_size", "must be >= 16")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"{key}.jpeg_quality", "must be within 1..100")
        if self.samples_per_shard < 1:
            raise ConfigError(f"{key}.samples_per_shard", "must be >= 1")
        if self.max_image_pixels < self.image_size ** 2:
            raise ConfigError(f"{key}.max_image_pixels", f"must be >= image_size**2 ({self.image_size ** 2}), "
                                                         f"got {self.max_image_pixels}")
        if self.dicom_window not in ("voi", "minmax", "none"):
            raise ConfigError(f"{key}.dicom_window", f"must be voi, minmax or none, got {self.dicom_window!r}")
        if not 0.0 <= self.max_skip_fraction <= 1.0:
            raise ConfigError(f"{key}.max_skip_fraction", "must be within [0, 1]")
        if self.split_fractions and abs(sum(self.split_fractions.values()) - 1.0) > 1e-6:
            raise ConfigError(f"{key}.split_fractions", "fractions must sum to 1")


DEFAULT_TOPIC_PROMPT = (
    "Rewrite the chest X-ray report as one short sentence per topic, one line each, as "
    "'topic: sentence'. Drop comparisons with prior studies and speculation. Write a negative as "
    "'<finding> is absent.'. Topics: {topics}.\nReport: {report}\nAnswer:\n")


@dataclass
class TopicsConfig:
    """``rrg annotate topics``: the LLaVA-TA topic overlay (trainer/topic_annotate.py)."""

    backend: Literal["rule", "hf"] = "rule"
    model_path: str = ""  # backend hf: a local Hugging Face causal-LM directory (never downloaded)
    prompt: str = DEFAULT_TOPIC_PROMPT  # backend hf: {report} and {topics} are filled in
    max_new_tokens: int = 192
    max_fallback_fraction: float = 1.0  # backend hf: stop when more studies than this fall back to rules
    splits: list[str] = field(default_factory=lambda: ["train"])  # only what trains reads reference topics

    def validate(self, key: str) -> None:
        if self.backend == "hf" and not self.model_path:
            raise ConfigError(f"{key}.model_path", "backend 'hf' needs a local model directory")
        if "{report}" not in self.prompt:
            raise ConfigError(f"{key}.prompt", "must contain {report}")
        if not 0.0 <= self.max_fallback_fraction <= 1.0:
            raise ConfigError(f"{key}.max_fallback_fraction", "must be within [0, 1]")
        if not self.splits:
            raise ConfigError(f"{key}.splits", "must name at least one split")


@dataclass
class MasksConfig:
    """``rrg shards masks``: a segmentation model run once over every study's frontal view."""

    backend: str = "hf_dir"  # hf_dir | torchscript (shards/segmenter.py)
    path: str = ""  # model directory or TorchScript file
    channels: list[str] = field(default_factory=list)  # output names in model order (hf_dir: from config.json)
    input_size: int = 0  # model input side; 0 = the model's own (hf_dir) or 256
    threshold: float = 0.5  # soft mask -> binary
    name: str = "seg_masks"  # sidecar name: <shards_dir>/sidecars/<name>/
    soft: bool = False  # also keep the probabilities, quantised to uint8 (DecodedSample.tensors[name]["soft"])

    def validate(self, key: str) -> None:
        if self.backend not in ("hf_dir", "torchscript"):
            raise ConfigError(f"{key}.backend", f"must be hf_dir or torchscript, got {self.backend!r}")
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"{key}.threshold", "must be within (0, 1)")
        if not self.name.replace("_", "").isalnum():
            raise ConfigError(f"{key}.name", "must match [A-Za-z0-9_]+ (it names sidecar members)")
        if self.input_size < 0 or self.input_size % 8:
            raise ConfigError(f"{key}.input_size", "must be 0 or a positive multiple of 8")


@dataclass
class DataConfig:
    """Where the shards are and how the streaming reader serves them."""

    source: SourceConfig = field(default_factory=SourceConfig)
    build: BuildConfig = field(default_factory=BuildConfig)
    masks: MasksConfig = field(default_factory=MasksConfig)
    shards_dir: str = "data/demo/shards"
    train_split: str = "train"
    eval_split: str = "validate"
    loader_workers: int = 1  # torch DataLoader worker processes per rank
    shuffle_buffer: int = 256  # samples per shuffle block within a loader worker
    max_skip_fraction: float = 0.01  # stop once bad samples exceed this share of the planned ones
    verify: Literal["checksum", "size", "none"] = "checksum"  # shard check against the manifest
    # s3:// shards_dir: true keeps a verified local copy ($RRG_CACHE_DIR/shards); false streams each
    # shard as the reader reaches it (a few at a time per loader process, nothing kept; shards/storage.py)
    cache: bool = True
    prefetch_factor: int = 2
    bucket_by_length: bool = False  # train batches of similar text length, per shuffle window (shards/bucketing.py)
    topics: TopicsConfig = field(default_factory=TopicsConfig)
    kg: KGConfig = field(default_factory=KGConfig)  # rrg kg build / attach
    reasoning: ReasoningConfig = field(default_factory=ReasoningConfig)  # rrg annotate reasoning (LVMed-R2)

    def validate(self, key: str = "data") -> None:
        self.build.validate(f"{key}.build")
        self.masks.validate(f"{key}.masks")
        self.topics.validate(f"{key}.topics")
        self.kg.validate(f"{key}.kg")
        self.reasoning.validate(f"{key}.reasoning")
        if self.loader_workers < 0:
            raise ConfigError(f"{key}.loader_workers", "must be >= 0")
        if self.shuffle_buffer < 1:
            raise ConfigError(f"{key}.shuffle_buffer", "must be >= 1")
        if not 0.0 <= self.max_skip_fraction < 1.0:
            raise ConfigError(f"{key}.max_skip_fraction", "must be within [0, 1)")
