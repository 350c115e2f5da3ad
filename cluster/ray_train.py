"""Cluster backend "ray": N Ray Train workers running the trainer's entry point under DeepSpeed.

The embedded default starts a private Ray on loopback; ``--address`` (or ``cluster.address``,
or ``RAY_ADDRESS``) joins an existing cluster.  Driver-side preparation (shards, tokenizer,
resolved config) comes from :mod:`trainer.prepare`; the workers run
:func:`trainer.worker.train_worker`.  SIGTERM/SIGUSR1 ask the workers to checkpoint and stop;
the command then exits 75 so a requeued job resumes.

Failures: an error rrg knows (trainer/runguard.py ``KNOWN_ERRORS``) raised in a worker is not
retried: :class:`KnownErrorsFailurePolicy` ends the run at once, without Ray's traceback log, and the
CLI prints the error's line.  Everything else (a worker SIGKILLed or out of memory, a node lost, a
preemption) goes to Ray's default policy and is retried up to ``cluster.max_failures``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

from cluster.errors import ClusterStartError
from cluster.ray_util import RayTaskPool
from configs.schema import ConfigError
from trainer.config import RunConfig
from trainer.prepare import (EXIT_PREEMPTED, check_run, finish_run, install_stop_handlers, prepare_run,
                             stopped_during_startup)
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


def _known_worker_error(err: BaseException) -> Optional[BaseException]:
    from cluster.errors import unwrap
    from trainer.runguard import known_errors

    return unwrap(err, tuple(t for types, _ in known_errors() for t in types))


def _failure_policy_cls():
    from ray.train.v2._internal.execution.failure_handling import DefaultFailurePolicy
    from ray.train.v2._internal.execution.failure_handling.failure_policy import FailureDecision

    class KnownErrorsFailurePolicy(DefaultFailurePolicy):
        """Ray's default policy, except that a worker group failing with an error rrg knows is not
        restarted (the same data, config or checkpoint fails the same way) and not logged with its
        traceback (the worker wrote that to ``logs/worker_errors.log``)."""

        def make_decision(self, training_failed_error):
            if _known_worker_error(training_failed_error) is not None:
                return FailureDecision.RAISE
            return super().make_decision(training_failed_error)

    return KnownErrorsFailurePolicy


def _trainer_cls(embedded: bool):
    """TorchTrainer with rrg's failure policy and, on an embedded cluster, without the placement-group
    cleaner: that detached actor polls the State API through address discovery (and the embedded
    cluster, the only thing it would clean, goes away with the driver anyway)."""
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

    policy_cls = _failure_policy_cls()

    class RrgTorchTrainer(TorchTrainer):
        def _initialize_and_run_controller(self, **kwargs):
            kwargs["failure_policy"] = policy_cls(self.run_config.failure_config)
            if embedded:
                kwargs["callbacks"] = [c for c in kwargs["callbacks"]
                                       if not isinstance(c, PlacementGroupCleanerCallback)]
            return super()._initialize_and_run_controller(**kwargs)

    return RrgTorchTrainer


def run_training(cfg: RunConfig, address: Optional[str] = None) -> dict[str, Any]:
    from trainer.runlock import run_lock_of

    with run_lock_of(cfg):  # before Ray starts and before anything is written into output_dir
        return _run_training(cfg, address)


def _run_training(cfg: RunConfig, address: Optional[str]) -> dict[str, Any]:
    manifest = check_run(cfg)  # before Ray: a run that is refused is refused in seconds
    pool = RayTaskPool(address=address, temp_dir=cfg.cluster.ray_temp_dir)  # brings Ray up (or joins it)
    check_resources(cfg)
    loop_config = prepare_run(cfg, pool, checked=True, manifest=manifest)
    from ray.train import FailureConfig, RunConfig as RayRunConfig, ScalingConfig

    from cluster.loopback import BoundTorchConfig
    from cluster.ray_util import embedded

    from trainer.worker import train_worker

    trainer = _trainer_cls(embedded())(
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
    # Ray Train replaces print() in its workers with a logger call that also tees to the original print
    # whenever sys.stdout is wrapped: every line rank 0 prints reached the console twice
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
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
