"""Cluster backend "torchrun": the trainer's workers as torchrun processes on this node (no Ray).

``rrg train CONFIG cluster.backend=torchrun`` runs
``python -m torch.distributed.run --standalone --nproc_per_node N -m trainer.worker CONFIG ...``
(through :func:`agent_main`, which turns torchrun's failure report into the worker's exit code).
``--standalone``: the rendezvous store takes a port the OS assigns when it binds, so two jobs
started at once on one machine never race for a port picked in advance.  The workers are started in their own session, so a SIGTERM or
SIGUSR1 meant for the job (SLURM preemption, Ctrl-C from a scheduler) reaches only this
driver, which asks the workers to checkpoint and stop through the run's STOP file; the
command then exits with the workers' status (75 after a preemption checkpoint).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from trainer.config import RunConfig
from trainer.prepare import EXIT_PREEMPTED, install_stop_handlers
from trainer.runguard import FATAL, raise_recorded_fatal


def torchrun_command(config_path: str | None, overrides: list[str], nproc: int) -> list[str]:
    """torchrun's agent (through :func:`agent_main`), running ``trainer.worker`` on this node."""
    cmd = [sys.executable, "-m", "cluster.torchrun", "--standalone", f"--nproc_per_node={nproc}", "--nnodes=1",
           "-m", "trainer.worker"]
    return cmd + ([config_path] if config_path else []) + list(overrides)


def run_training(cfg: RunConfig, config_path: str | None, overrides: list[str]) -> int:
    from trainer.runlock import run_lock_of

    with run_lock_of(cfg):  # the workers find its token in RRG_RUN_LOCK_TOKEN and run under it
        return _run_training(cfg, config_path, overrides)


def _run_training(cfg: RunConfig, config_path: str | None, overrides: list[str]) -> int:
    out = Path(cfg.output_dir).resolve()
    stop_file = out / "STOP"
    stop_file.unlink(missing_ok=True)
    install_stop_handlers(stop_file)
    cmd = torchrun_command(config_path, overrides, cfg.cluster.num_workers)
    (out / "result.json").unlink(missing_ok=True)
    (out / FATAL).unlink(missing_ok=True)
    env = dict(os.environ, RRG_DRIVER="torchrun")  # the workers leave the one-line error message to us
    proc = subprocess.Popen(cmd, start_new_session=True, env=env)
    while True:
        try:
            rc = proc.wait()
            break
        except InterruptedError:  # a signal handler ran; keep waiting for the workers
            continue
    try:  # torchrun reports any non-zero worker exit as a failure: the run's own result says what it was
        if json.loads((out / "result.json").read_text()).get("preempted"):
            return EXIT_PREEMPTED
    except (OSError, ValueError):
        pass
    if rc != 0:
        raise_recorded_fatal(out)  # a worker's DataError etc.: the CLI prints its one line and exit code
    return rc


def agent_main(argv: list[str]) -> int:
    """``torch.distributed.run`` whose failure is an exit code, not a traceback.

    torchrun's agent raises ``ChildFailedError`` (printed with its traceback and a table) when a
    worker exits non-zero.  Here it exits with the first failed worker's code instead: a worker's
    error rrg knows (exit 2-6) is then reported by ``rrg train`` as its one line, and anything else
    left its own traceback in the worker's output.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(argv))
    except ChildFailedError as err:
        _, failure = err.get_first_failure()
        code = failure.exitcode
        return code if isinstance(code, int) and 0 < code < 256 else 1
    return 0


if __name__ == "__main__":
    sys.exit(agent_main(sys.argv[1:]))
