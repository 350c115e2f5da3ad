"""Cluster backend "ray": N Ray Train workers running the trainer's entry point under DeepSpeed.

The embedded default starts a private Ray on loopback; ``--address`` (or ``cluster.address``,
or ``RAY_ADDRESS``) joins an existing cluster.  Driver-side preparation (shards, tokenizer,
resolved config) comes from :mod:`trainer.prepare`; the workers run
:func:`trainer.worker.train_worker`.  SIGTERM/SIGUSR1 ask the workers to checkpoint and stop;
the command then exits 75 so a requeued job resumes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from cluster.ray_util import RayTaskPool
from configs.schema import ConfigError
from trainer.config import RunConfig
from trainer.prepare import finish_run, install_stop_handlers, prepare_run
from trainer.runguard import raise_recorded_fatal


def check_resources(cfg: RunConfig) -> None:
    """``num_workers`` must fit the Ray cluster, else Ray would wait for resources forever."""
    import ray

    total = ray.cluster_resources()
    need = {"CPU": cfg.cluster.num_workers * cfg.cluster.cpus_per_worker}
    if cfg.cluster.use_gpu:
        need["GPU"] = cfg.cluster.num_workers
    for res, amount in need.items():
        if amount > total.get(res, 0):
            raise ConfigError("cluster.num_workers",
                              f"{cfg.cluster.num_workers} workers need {amount:g} {res} but the Ray cluster has "
                              f"{total.get(res, 0):g}")


def run_training(cfg: RunConfig, address: Optional[str] = None) -> dict[str, Any]:
    pool = RayTaskPool(address=address, temp_dir=cfg.cluster.ray_temp_dir)  # brings Ray up (or joins it)
    check_resources(cfg)
    loop_config = prepare_run(cfg, pool)
    from ray.train import FailureConfig, RunConfig as RayRunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from cluster.loopback import BoundTorchConfig

    from trainer.worker import train_worker

    trainer = TorchTrainer(
        train_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=cfg.cluster.num_workers, use_gpu=cfg.cluster.use_gpu,
                                     resources_per_worker={"CPU": cfg.cluster.cpus_per_worker}),
        torch_config=BoundTorchConfig(backend="nccl" if cfg.cluster.use_gpu else "gloo", loopback=not address),
        run_config=RayRunConfig(name=cfg.name, storage_path=str(Path(cfg.output_dir) / "ray"),
                                failure_config=FailureConfig(max_failures=cfg.cluster.max_failures)),
    )
    pids = Path(cfg.output_dir) / "pids"
    install_stop_handlers(Path(loop_config["stop_file"]), started=lambda: any(pids.glob("rank_*.pid")))
    try:
        trainer.fit()
    except Exception:
        raise_recorded_fatal(cfg.output_dir)  # the worker's own DataError etc., not Ray's wrapper
        raise
    raise_recorded_fatal(cfg.output_dir)
    return finish_run(cfg)
