"""Bring up (or join) Ray the one way rrg does it, for the shard writer and the trainer.

Why a helper: Ray 2.60 rewrites 127.0.0.1/localhost to the machine's external
address, and on machines where only loopback may carry traffic a bare
``ray.init()`` tries to reach that address.  Setting
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` before Ray is imported keeps a
single-node cluster on loopback; usage stats and the dashboard stay off.  The
temp dir holds unix sockets, whose paths are limited to ~107 bytes, so it must
be short and absolute (``/tmp/rrg-ray-<uid>`` by default).

Isolation: several rrg jobs (and other Ray users) share a machine.  Every embedded cluster gets
its own temp dir (``<temp dir>/<driver pid>``, removed when the driver exits) and is started with
``address="local"``; a joined cluster is named by its address.  Nothing is found by discovery:
Ray's own discovery (``ray.init()`` or the State API without an address: ``RAY_ADDRESS``, then
``/tmp/ray/ray_current_cluster``, then every ``gcs_server`` process on the machine, which fails with
"Found multiple active Ray instances" as soon as there are two) is pinned in every worker process
of an rrg job to the job's own cluster (``RAY_ADDRESS`` set by the worker setup hook), and Ray
Train's placement-group cleaner, which polls the State API that way, is not started for an
embedded cluster (cluster/ray_train.py: the cluster dies with its driver anyway).
"""
from __future__ import annotations

import atexit
import logging
import os
import shutil
from pathlib import Path
from typing import Any

# The session dir Ray creates below the temp dir, plus the longest socket name, take about 60 bytes.
_MAX_TEMP_DIR_LEN = 45
_PID_DIGITS = 8  # the per-driver subdirectory: "/<pid>"
_EMBEDDED: list[str] = []  # the temp dir of the cluster this process started (empty: none, or joined one)

_LOOPBACK_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}


def default_temp_dir() -> str:
    return f"/tmp/rrg-ray-{os.getuid()}"


def _checked_temp_dir(temp_dir: str | None) -> str:
    """``<temp dir>/<this pid>``: one cluster's own directory (sockets, session, logs)."""
    base = os.path.abspath(os.path.expanduser(temp_dir or default_temp_dir()))
    limit = _MAX_TEMP_DIR_LEN - 1 - _PID_DIGITS
    if len(base) > limit:
        raise ValueError(
            f"Ray temp dir '{base}' is {len(base)} characters; Ray puts unix sockets below it (in a "
            f"directory per cluster) and socket paths are limited to ~107 bytes, so keep it under {limit} "
            f"(e.g. {default_temp_dir()})"
        )
    path = os.path.join(base, str(os.getpid()))
    Path(path).mkdir(parents=True, exist_ok=True)
    return path


def _remove_own_temp_dir() -> None:
    """At exit: shut the embedded cluster down, then remove its directory (a killed driver leaves it)."""
    import ray

    if _EMBEDDED:
        ray.shutdown()
    while _EMBEDDED:
        shutil.rmtree(_EMBEDDED.pop(), ignore_errors=True)


def embedded() -> bool:
    """True when this process started the Ray cluster it is connected to (no ``--address``)."""
    import ray

    return bool(_EMBEDDED) and ray.is_initialized()


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


class _NoTracebackForTransientTimeouts(logging.Filter):
    """Ray Train's controller logs a GetTimeoutError with its whole traceback whenever a resource
    request is slow on a busy machine, adding that it is "safe to ignore": the line stays, the
    traceback goes."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text = None, None
        return True


def quiet_worker_logs() -> None:
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").addFilter(
        _DropStateApiNoise())
    logging.getLogger("ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client").addFilter(
        _NoTracebackForTransientTimeouts())


def pin_own_cluster() -> None:
    """``RAY_ADDRESS`` = the cluster this worker belongs to, so any code in it that would discover a
    cluster (``ray.init()``, ``ray.util.state`` without an address) finds its own and no other."""
    import ray

    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address


def setup_worker_process() -> None:
    """Runs in every Ray worker process of an rrg job (``worker_process_setup_hook``)."""
    pin_own_cluster()
    quiet_worker_logs()


_RUNTIME_ENV = {"worker_process_setup_hook": "cluster.ray_util.setup_worker_process"}


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
    own_dir = _checked_temp_dir(temp_dir)
    ray.init(
        address="local",  # a new cluster, never one found on the machine or in RAY_ADDRESS
        num_cpus=num_cpus,
        include_dashboard=False,
        _temp_dir=own_dir,
        _node_ip_address="127.0.0.1",  # the node registers (and listens) on loopback
        logging_level=logging.WARNING,
        log_to_driver=True,
        runtime_env=_RUNTIME_ENV,
    )
    if not _EMBEDDED:
        atexit.register(_remove_own_temp_dir)  # runs before Ray's own atexit shutdown (registered earlier)
    _EMBEDDED.append(own_dir)


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
