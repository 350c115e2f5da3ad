"""Typed config of ``rrg shards masks`` (``data.passes.masks``): the segmenter run once over the shards."""
from __future__ import annotations

from dataclasses import dataclass, field

from configs.schema import ConfigError


@dataclass
class MasksConfig:
    """``rrg shards masks``: a segmentation model run once over every study's frontal view."""

    backend: str = "hf_dir"  # hf_dir | torchscript (shards/passes/masks/segmenter.py)
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
