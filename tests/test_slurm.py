"""``rrg submit slurm`` on a real one-machine SLURM: a job preempted mid-run checkpoints, requeues, resumes exactly and completes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.slurmkit import LocalSlurm, ensure_installed
from tests.trainkit import ROOT, TINY, free_port, step_losses, torchrun

STEPS = 24
RUN = [f"train.max_steps={STEPS}", "checkpoint.every_steps=4", "cluster.num_workers=2",
       f"cluster.slurm.rrg={sys.executable} -m launcher.cli", "cluster.slurm.ip_command=echo 127.0.0.1",
       "cluster.slurm.join_timeout_s=120"]


def submit(env: dict, args: list[str]) -> str:
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "submit", "slurm", TINY, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.split("SLURM job ")[1].split(":")[0]


def events(out: Path) -> list[dict]:
    path = out / "slurm" / "jobs.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


@pytest.fixture(scope="module")
def slurm():
    ensure_installed()
    root = Path(f"/tmp/rrs-{os.getpid()}")  # short: munge and Ray put sockets below it
    cluster = LocalSlurm(root).start()
    cluster.env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{cluster.env['PATH']}"  # ray, for the script
    cluster.env["PYTHONPATH"] = str(ROOT)
    cluster.env["WANDB_MODE"] = "offline"
    yield cluster
    cluster.stop()


def test_dry_run_prints_the_script(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "submit", "slurm", TINY, "--nodes", "3",
                           "--gpus-per-node", "4", "--time", "02:00:00", "--partition", "gpu",
                           f"output_dir={tmp_path}", "--dry-run"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    script = proc.stdout
    for line in ("#SBATCH --nodes=3", "#SBATCH --gpus-per-task=4", "#SBATCH --time=02:00:00",
                 "#SBATCH --partition=gpu", "#SBATCH --signal=B:USR1@120", "#SBATCH --requeue",
                 "#SBATCH --open-mode=append", "trap 'forward USR1' USR1", 'scontrol requeue "$SLURM_JOB_ID"'):
        assert line in script, line
    assert "--resume auto" in script and f"output_dir={tmp_path}" in script
    assert not (tmp_path / "slurm").exists(), "--dry-run wrote files"
    bad = subprocess.run([sys.executable, "-m", "launcher.cli", "submit", "slurm", TINY, "--time", "soon",
                          "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "cluster.slurm.time" in bad.stderr


@pytest.mark.slow
def test_preempted_job_requeues_resumes_exactly_and_completes(slurm, shards, tmp_path):
    full, pre = tmp_path / "full", tmp_path / "pre"
    common = [*RUN, f"data.shards_dir={shards}", "cluster.ray_temp_dir=/tmp/rr-cl"]
    job_b = submit(slurm.env, [*common, f"output_dir={pre}", f"cluster.slurm.ray_port={free_port()}",
                               "logging.wandb.mode=offline", f"cluster.slurm.env.WANDB_DIR={tmp_path / 'wandb'}"])
    # Preempt the job as soon as its rank-0 worker is up: the tiny run trains
    # 24 steps in about a second, so waiting for a given step races the signal's way (scancel -> batch shell
    # trap -> driver -> STOP file). From here the signal has the engine build and the whole run to land in,
    # and the workers checkpoint at the first step that sees it.
    deadline = time.time() + 600
    while not (pre / "pids" / "rank_0.pid").is_file():
        assert time.time() < deadline, "the job's workers never started"
        time.sleep(0.2)
    assert slurm.run(["scancel", "--batch", "--signal=USR1", job_b]).returncode == 0
    slurm.wait_gone(job_b, 900)
    log = (pre / "slurm" / f"slurm-{job_b}.out").read_text()
    ends = [e for e in events(pre) if e["event"] == "end"]
    starts = [e for e in events(pre) if e["event"] == "start"]
    assert [e["exit"] for e in ends] == [75, 0], log[-4000:]
    assert [e["restart_count"] for e in starts] == [0, 1] and {e["job_id"] for e in starts} == {job_b}
    assert "forwarding to the driver" in log and "requeueing job" in log
    stopped = [int(line.split("step ")[1].split()[0]) for line in log.splitlines()
               if line.startswith("rrg: trained to step") and "preempted" in line]
    assert stopped and 1 <= stopped[0] < STEPS, log[-4000:]
    assert f"step_{stopped[0]:07d}" in log and "resumed from" in log
    losses = step_losses(pre)
    assert sorted(losses) == list(range(1, STEPS + 1)), "a step was lost"
    # the uninterrupted run, same workers and overrides (torchrun: Ray's workers give bit-identical numbers)
    torchrun(2, [*RUN[:2], f"data.shards_dir={shards}", f"output_dir={full}"])
    baseline = step_losses(full)
    assert sorted(baseline) == list(range(1, STEPS + 1))
    assert losses == baseline, "the requeued run diverged from the uninterrupted one"
    runs = sorted((tmp_path / "wandb" / "wandb").glob("offline-run-*"))
    assert {p.name.rsplit("-", 1)[-1] for p in runs} == {(pre / "wandb_run_id").read_text().strip()}, \
        "W&B run split on requeue"
    for run in runs:
        data = next(run.glob("*.wandb")).read_bytes()
        assert b"slurm_job_id" in data and f'"{job_b}"'.encode() in data, "no SLURM job id in the W&B metadata"
