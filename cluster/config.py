"""Typed config section for where and on how many workers a run executes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from configs.schema import ConfigError


@dataclass
class ClusterConfig:
    num_workers: int = 2  # Ray Train workers (= DeepSpeed ranks)
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    address: Optional[str] = None  # join an existing Ray cluster; None = embedded local one on loopback
    max_failures: int = 2  # worker-group restarts from the latest checkpoint
    ray_temp_dir: Optional[str] = None  # default: <output_dir>/../.ray (kept short for unix sockets)

    def validate(self, key: str = "cluster") -> None:
        if self.num_workers < 1:
            raise ConfigError(f"{key}.num_workers", "must be >= 1")
        if self.cpus_per_worker <= 0:
            raise ConfigError(f"{key}.cpus_per_worker", "must be > 0")
        if self.max_failures < 0:
            raise ConfigError(f"{key}.max_failures", "must be >= 0")
