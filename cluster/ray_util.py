"""Bring up (or join) Ray the one way rrg does it, for the shard writer and the trainer.

Why a helper: Ray 2.60 rewrites 127.0.0.1/localhost to the machine's external
address, and on machines where only loopback may carry traffic a bare
``ray.init()`` tries to reach that address.  Setting
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` before Ray is imported keeps a
single-node cluster on loopback; usage stats and the dashboard stay off.  The
temp dir holds unix sockets, whose paths are limited to ~107 bytes, so it must
be short and absolute (``/tmp/rrg-ray-<uid>`` by default).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

# The session dir Ray creates below the temp dir, plus the longest socket name, take about 60 bytes.
_MAX_TEMP_DIR_LEN = 45

_LOOPBACK_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}


def default_temp_dir() -> str:
    return f"/tmp/rrg-ray-{os.getuid()}"


def _checked_temp_dir(temp_dir: str | None) -> str:
    path = os.path.abspath(os.path.expanduser(temp_dir or default_temp_dir()))
    if len(path) > _MAX_TEMP_DIR_LEN:
        raise ValueError(
            f"Ray temp dir '{path}' is {len(path)} characters; Ray puts unix sockets below it and "
            f"socket paths are limited to ~107 bytes, so keep it under {_MAX_TEMP_DIR_LEN} "
            f"(e.g. {default_temp_dir()})"
        )
    Path(path).mkdir(parents=True, exist_ok=True)
    return path


def _keep_loopback() -> None:
    """Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, at import; if something imported Ray
    before our env default was set, apply the same setting to the constant it was read into."""
    if os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "").lower() not in ("0", "false"):
        return  # the user asked for cluster networking explicitly
    from ray._private import ray_constants

    if getattr(ray_constants, "ENABLE_RAY_CLUSTER", False):
        ray_constants.ENABLE_RAY_CLUSTER = False


class _DropStateApiNoise(logging.Filter):
    """Ray Train's placement-group cleaner polls the State API, which needs the dashboard we do
    not start; it would warn once a second for the whole run.  Only that message is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "State API may be temporarily unavailable" not in record.getMessage()


def quiet_worker_logs() -> None:
    """Runs in every Ray worker process of an rrg job (``worker_process_setup_hook``)."""
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").addFilter(
        _DropStateApiNoise())


_RUNTIME_ENV = {"worker_process_setup_hook": "cluster.ray_util.quiet_worker_logs"}


def ensure_ray(address: str | None = None, temp_dir: str | None = None, num_cpus: int | None = None) -> None:
    """Make sure this process is connected to Ray.

    - Ray already initialised in this process: reuse it (arguments are ignored).
    - ``address`` given (``host:port`` or ``auto``): join that cluster.
    - otherwise: start a private local cluster on loopback with ``num_cpus``
      CPUs (default: all), no dashboard, sockets under ``temp_dir``.
    """
    for key, value in _LOOPBACK_ENV.items():
        os.environ.setdefault(key, value)  # before Ray is imported: it reads them at import/init
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True, runtime_env=_RUNTIME_ENV)
        return
    _keep_loopback()
    ray.init(
        address="local",  # never pick up a RAY_ADDRESS from the environment by accident
        num_cpus=num_cpus,
        include_dashboard=False,
        _temp_dir=_checked_temp_dir(temp_dir),
        _node_ip_address="127.0.0.1",  # the node registers (and listens) on loopback
        logging_level=logging.WARNING,
        log_to_driver=True,
        runtime_env=_RUNTIME_ENV,
    )


class RayTaskPool:
    """:class:`configs.parallel.TaskPool` on Ray tasks: at most ``limit`` in flight (0: all at once).

    A task's own exception is re-raised as itself (not wrapped in ``RayTaskError``), and the
    tasks still running are cancelled, so a data error stops the pass at once with its message.
    """

    def __init__(self, address: str | None = None, temp_dir: str | None = None, max_retries: int = 1):
        ensure_ray(address=address, temp_dir=temp_dir)
        self.max_retries = max_retries

    @property
    def parallelism(self) -> int:
        import ray

        return max(1, int(ray.cluster_resources().get("CPU", 1)))

    def map_unordered(self, fn, items, *, shared=(), num_cpus=1, num_gpus=0, limit=0, env=None):
        import ray

        options: dict = {"num_cpus": num_cpus, "num_gpus": num_gpus, "max_retries": self.max_retries,
                         "retry_exceptions": False}
        if env:
            options["runtime_env"] = {"env_vars": dict(env)}
        remote = ray.remote(fn).options(**options)
        shared_refs = [ray.put(s) for s in shared]
        queue = list(enumerate(items))
        running: dict[Any, int] = {}
        limit = limit or len(queue) or 1
        try:
            while queue or running:
                while queue and len(running) < limit:
                    i, item = queue.pop(0)
                    running[remote.remote(*shared_refs, *item)] = i
                done, _ = ray.wait(list(running), num_returns=1)
                index = running.pop(done[0])
                try:
                    result = ray.get(done[0])
                except ray.exceptions.RayTaskError as err:
                    cause = getattr(err, "cause", None)
                    if isinstance(cause, BaseException):
                        raise cause from None
                    raise
                yield index, result
        finally:
            for ref in running:
                ray.cancel(ref, force=True)
