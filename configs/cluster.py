"""Typed config section ``cluster``: where and on how many workers a run executes, and how it is submitted.

Pure data, kept in the foundation floor because the trainer (world size, devices) and the
cluster backends (cluster/ray_train.py, torchrun.py, slurm.py, k8s.py) both read it.

``cluster.slurm`` and ``cluster.k8s`` only matter to ``rrg submit slurm|k8s``
(cluster/slurm.py, cluster/k8s.py); a local ``rrg train`` ignores them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, Optional

from configs.schema import ConfigError

_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")  # sbatch --time: M, M:S, H:M:S, D-H, D-H:M:S ...


@dataclass
class SlurmConfig:
    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_node: int = 2
    time: str = "01:00:00"
    partition: Optional[str] = None
    signal_lead_s: int = 120  # SIGUSR1 this long before the time limit (sbatch --signal=B:USR1@N)
    ray_port: int = 6379
    setup: list[str] = field(default_factory=list)  # shell lines run first (module load, source venv ...)
    extra_sbatch: list[str] = field(default_factory=list)  # extra '#SBATCH' options, e.g. '--account=abc'
    rrg: str = "rrg"  # how the nodes run rrg (e.g. '/opt/venv/bin/rrg' or 'python -m launcher.cli')
    ip_command: str = "hostname -I | awk '{print $1}'"  # prints the address Ray listens on, run on each node
    join_timeout_s: int = 300  # give up if not every node's Ray joined by then
    env: dict[str, str] = field(default_factory=dict)  # exported in the script before anything starts

    def validate(self, key: str = "cluster.slurm") -> None:
        if self.nodes < 1:
            raise ConfigError(f"{key}.nodes", "must be >= 1")
        if self.gpus_per_node < 0 or self.cpus_per_node < 1:
            raise ConfigError(f"{key}.cpus_per_node", "needs cpus_per_node >= 1 and gpus_per_node >= 0")
        if not _TIME.match(self.time):
            raise ConfigError(f"{key}.time", f"not an sbatch time (e.g. 04:00:00 or 1-00:00:00), got {self.time!r}")
        if self.signal_lead_s < 1:
            raise ConfigError(f"{key}.signal_lead_s", "must be >= 1")


@dataclass
class K8sConfig:
    image: str = "rrg:latest"  # an image with rrg installed (same Ray version as the driver)
    namespace: Optional[str] = None
    job_name: Optional[str] = None  # default: rrg-<run name>
    head_cpus: str = "2"
    head_memory: str = "8Gi"
    worker_memory: str = "16Gi"
    gpus_per_worker: int = 0  # nvidia.com/gpu per worker pod (one Ray Train worker per pod)
    volume_claim: Optional[str] = None  # a ReadWriteMany PVC holding shards + outputs, mounted on every pod
    mount_path: str = "/data"
    s3_secret: Optional[str] = None  # a Secret with AWS_* keys, for s3:// shards/outputs
    shutdown_after_job_finishes: bool = True
    ttl_seconds_after_finished: int = 3600
    backoff_limit: int = 2  # new RayClusters KubeRay may start for a failed job (each resumes)
    active_deadline_seconds: Optional[int] = None

    def validate(self, key: str = "cluster.k8s") -> None:
        if self.gpus_per_worker < 0:
            raise ConfigError(f"{key}.gpus_per_worker", "must be >= 0")
        if self.ttl_seconds_after_finished < 0:
            raise ConfigError(f"{key}.ttl_seconds_after_finished", "must be >= 0")
        if self.backoff_limit < 0:
            raise ConfigError(f"{key}.backoff_limit", "must be >= 0")
        if self.active_deadline_seconds is not None and self.active_deadline_seconds <= 0:
            raise ConfigError(f"{key}.active_deadline_seconds", "must be > 0")


@dataclass
class ClusterConfig:
    backend: Literal["ray", "torchrun"] = "ray"  # cluster/ray_train.py, or cluster/torchrun.py (no Ray)
    num_workers: int = 2  # training workers (= DeepSpeed ranks)
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    address: Optional[str] = None  # join an existing Ray cluster; None = embedded local one on loopback
    max_failures: int = 2  # worker-group restarts from the latest checkpoint
    start_timeout_s: float = 600.0  # a worker group waits this long for its resources, then the run fails (exit 7)
    ray_temp_dir: Optional[str] = None  # default /tmp/rrg-ray-<uid>; each embedded cluster uses <it>/<driver pid>
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    k8s: K8sConfig = field(default_factory=K8sConfig)

    def validate(self, key: str = "cluster") -> None:
        if self.num_workers < 1:
            raise ConfigError(f"{key}.num_workers", "must be >= 1")
        if self.cpus_per_worker <= 0:
            raise ConfigError(f"{key}.cpus_per_worker", "must be > 0")
        if self.max_failures < 0:
            raise ConfigError(f"{key}.max_failures", "must be >= 0")
        if not self.start_timeout_s > 0 or self.start_timeout_s == float("inf"):
            raise ConfigError(f"{key}.start_timeout_s", f"must be a finite number of seconds > 0, got {self.start_timeout_s}")
        self.slurm.validate(f"{key}.slurm")
        self.k8s.validate(f"{key}.k8s")
