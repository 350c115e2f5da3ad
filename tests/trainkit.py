"""Helpers for the end-to-end training tests: run workers under torchrun or Ray, read their logs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from trainer.strategy import free_port  # noqa: F401  (the tests import it from here)

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "tiny.yaml")


def torchrun(nproc: int, overrides: list[str], timeout: int = 420) -> subprocess.CompletedProcess:
    # --standalone: the OS assigns the rendezvous port at bind time (a port picked in advance can be taken
    # by a test on the other xdist worker before torchrun binds it: EADDRINUSE)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "trainer.worker", TINY, *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"torchrun failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def rrg(args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "launcher.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def step_losses(output_dir: Path) -> dict[int, float]:
    """Rank 0's exact per-step losses; a step logged twice (after a restart) keeps the last value."""
    losses: dict[int, float] = {}
    path = Path(output_dir) / "train_log.jsonl"
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if set(rec) == {"step", "loss"}:
            losses[rec["step"]] = rec["loss"]
    return losses


def wait_for_step(output_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 300) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"run ended early ({proc.returncode}):\n{proc.stdout.read()[-4000:]}")
        try:
            done = max(step_losses(output_dir), default=0)
        except (FileNotFoundError, json.JSONDecodeError):
            done = 0
        if done >= step:
            return done
        time.sleep(0.5)
    raise AssertionError(f"no step {step} within {timeout}s")


def result(output_dir: Path) -> dict:
    return json.loads((Path(output_dir) / "result.json").read_text())


def env_offline(tmp: Path) -> dict:
    env = dict(os.environ)
    env.update(WANDB_MODE="offline", WANDB_DIR=str(tmp))
    return env
