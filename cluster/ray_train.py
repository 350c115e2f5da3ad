"""Cluster backend "ray": N Ray Train workers running the trainer's entry point under DeepSpeed.

The embedded default starts a private Ray on loopback; ``--address`` (or ``cluster.address``,
or ``RAY_ADDRESS``) joins an existing cluster.  Driver-side preparation (shards, tokenizer,
resolved config) comes from :mod:`trainer.prepare`; the workers run
:func:`trainer.worker.train_worker`.  SIGTERM/SIGUSR1 ask the workers to checkpoint and stop;
the command then exits 75 so a requeued job resumes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

from cluster.errors import ClusterStartError
from cluster.ray_util import RayTaskPool
from configs.schema import ConfigError
from trainer.config import RunConfig
from trainer.prepare import EXIT_PREEMPTED, finish_run, install_stop_handlers, prepare_run, stopped_during_startup
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


_START_ATTEMPTS = 4


def _startup_timed_out(err: BaseException) -> bool:
    from cluster.errors import unwrap

    try:
        from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError
    except ImportError:  # another Ray layout: match by name
        return "WorkerGroupStartupTimeoutError" in repr(err)
    return unwrap(err, (WorkerGroupStartupTimeoutError,)) is not None


def _free_summary() -> str:
    import ray

    free = ray.available_resources()
    return ", ".join(f"{free.get(k, 0):g} {k}" for k in ("CPU", "GPU") if k in ray.cluster_resources()) or "nothing"


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
                                # a worker group that cannot get its resources within start_timeout_s
                                # fails the run (Ray would otherwise retry scheduling forever): the time is
                                # split over a few start attempts, so a worker start-up that fails once
                                # (a node going away mid-restart) is still retried
                                failure_config=FailureConfig(max_failures=cfg.cluster.max_failures,
                                                             controller_failure_limit=_START_ATTEMPTS - 1)),
    )
    # read by Ray Train's controller, which gets the driver's RAY_TRAIN_* variables
    os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = str(cfg.cluster.start_timeout_s / _START_ATTEMPTS)
    pids = Path(cfg.output_dir) / "pids"
    install_stop_handlers(Path(loop_config["stop_file"]), started=lambda: any(pids.glob("rank_*.pid")))
    try:
        trainer.fit()
    except SystemExit:
        if stopped_during_startup():
            raise SystemExit(EXIT_PREEMPTED) from None
        raise
    except Exception as err:
        raise_recorded_fatal(cfg.output_dir)  # the worker's own DataError etc., not Ray's wrapper
        if _startup_timed_out(err):
            raise ClusterStartError(
                f"the {cfg.cluster.num_workers} training workers did not get their resources "
                f"({cfg.cluster.cpus_per_worker:g} CPU{' + 1 GPU' if cfg.cluster.use_gpu else ''} each) within "
                f"cluster.start_timeout_s={cfg.cluster.start_timeout_s:g}s; the Ray cluster has "
                f"{_free_summary()} free (busy with other jobs?)") from None
        raise
    raise_recorded_fatal(cfg.output_dir)
    return finish_run(cfg)
