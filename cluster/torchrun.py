"""Cluster backend "torchrun": the trainer's workers as torchrun processes on this node (no Ray).

``rrg train CONFIG cluster.backend=torchrun`` runs
``python -m torch.distributed.run --nproc_per_node N -m trainer.worker CONFIG ...`` with the
rendezvous on 127.0.0.1.  The workers are started in their own session, so a SIGTERM or
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
from trainer.strategy import free_port


def torchrun_command(config_path: str | None, overrides: list[str], nproc: int, port: int) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "trainer.worker"]
    return cmd + ([config_path] if config_path else []) + list(overrides)


def run_training(cfg: RunConfig, config_path: str | None, overrides: list[str]) -> int:
    out = Path(cfg.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    stop_file = out / "STOP"
    stop_file.unlink(missing_ok=True)
    install_stop_handlers(stop_file)
    cmd = torchrun_command(config_path, overrides, cfg.cluster.num_workers, free_port())
    (out / "result.json").unlink(missing_ok=True)
    (out / FATAL).unlink(missing_ok=True)
    proc = subprocess.Popen(cmd, start_new_session=True, env=dict(os.environ))
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
