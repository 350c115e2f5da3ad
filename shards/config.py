"""Typed config sections owned by the data path: shard building and streaming."""
from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from typing import Any, Literal

from configs.schema import ConfigError, deep_merge
from shards.passes import all_passes


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


def _passes_config() -> type:
    """``data.passes``: one typed section per registered data pass (shards/passes/), named after it."""
    specs = all_passes()
    cls = make_dataclass("PassesConfig", [(p.name, p.config, field(default_factory=p.config)) for p in specs])
    cls.__doc__ = "Sections of the offline data passes: " + "; ".join(f"{p.name}: {p.summary}" for p in specs)
    cls.names = tuple(p.name for p in specs)
    return cls


PassesConfig = _passes_config()


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
    # s3:// shards_dir: true keeps a verified local copy ($RRG_CACHE_DIR/shards); false streams each
    # shard as the reader reaches it (a few at a time per loader process, nothing kept; shards/storage.py)
    cache: bool = True
    prefetch_factor: int = 2
    bucket_by_length: bool = False  # train batches of similar text length, per shuffle window (shards/bucketing.py)
    passes: PassesConfig = field(default_factory=lambda: PassesConfig())  # data.passes.<name>: shards/passes/

    @classmethod
    def migrate_dict(cls, data: dict, prefix: str) -> dict:
        """A pass section at its place before ``passes`` (``data.masks: ...``, as older exports' run configs
        and users' configs have it) is read as ``data.passes.<name>``; given at both places (an old-style
        override of a new-style base config), the old-style keys win."""
        from configs.schema import deep_merge

        moved = [k for k in data if k in PassesConfig.names]
        if not moved:
            return data
        data = dict(data)
        passes = dict(data.get("passes") or {})
        for k in moved:
            old = data.pop(k)
            passes[k] = deep_merge(passes[k], old) if isinstance(passes.get(k), dict) and isinstance(old, dict) else old
        data["passes"] = passes
        return data

    def validate(self, key: str = "data") -> None:
        self.build.validate(f"{key}.build")
        for name in PassesConfig.names:
            getattr(self.passes, name).validate(f"{key}.passes.{name}")
        if self.loader_workers < 0:
            raise ConfigError(f"{key}.loader_workers", "must be >= 0")
        if self.shuffle_buffer < 1:
            raise ConfigError(f"{key}.shuffle_buffer", "must be >= 1")
        if not 0.0 <= self.max_skip_fraction < 1.0:
            raise ConfigError(f"{key}.max_skip_fraction", "must be within [0, 1)")
