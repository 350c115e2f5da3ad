"""Hardening without a training run: config limits, build lock, run-dir guards, checkpoint hashes, guards."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.trainkit import ROOT, TINY


def _rrg(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("override, key", [("logging.every_steps=0", "logging.every_steps"),
                                           ("train.lr=1e999", "train.lr"),
                                           ("train.betas=[0.9,.nan]", "train.betas[1]")])
def test_unrunnable_values_are_one_line_config_errors(override, key):
    out = _rrg("config", "show", TINY, override)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and f"'{key}'" in lines[0], out.stderr


def test_build_lock_refuses_a_live_holder_and_takes_over_a_stale_one(tmp_path):
    from shards.buildlock import LOCK_NAME, BuildLockedError, build_lock

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom shards.buildlock import build_lock\n"
                               "with build_lock(sys.argv[1]):\n    print('HELD', flush=True); time.sleep(60)",
                               str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "HELD"
        t0 = time.monotonic()
        with pytest.raises(BuildLockedError, match=f"pid {holder.pid}"):
            with build_lock(tmp_path, wait_s=1.0, poll_s=0.1):
                pass
        assert time.monotonic() - t0 >= 1.0, "did not wait before refusing"
    finally:
        holder.kill()
        holder.wait()
    # the killed holder left its lock behind: stale, detected and taken over
    assert (tmp_path / LOCK_NAME).is_file()
    with build_lock(tmp_path) as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_NAME).exists()
    # a lock created but never written (its holder died in between): fresh, it is respected; old, taken over
    (tmp_path / LOCK_NAME).write_text("")
    with pytest.raises(BuildLockedError, match="pid None"):
        with build_lock(tmp_path, wait_s=0.2, poll_s=0.1):
            pass
    old = time.time() - 120
    os.utime(tmp_path / LOCK_NAME, (old, old))
    with build_lock(tmp_path) as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()


def test_second_shards_build_into_a_locked_dir_is_refused_in_one_line(tmp_path):
    from shards.buildlock import build_lock

    (tmp_path / "s").mkdir()
    with build_lock(tmp_path / "s"):  # this process is alive: the CLI must refuse, not delete our files
        (tmp_path / "s" / "x.tar.tmp-1").write_text("in progress")
        out = _rrg("shards", "build", TINY, "--out", str(tmp_path / "s"), "cluster.ray_temp_dir=/tmp/rr-hd")
    assert out.returncode == 3, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1].startswith("rrg: ") and "being built by pid" in out.stderr
    assert (tmp_path / "s" / "x.tar.tmp-1").is_file(), "the running build's temp file was deleted"


def test_fresh_start_into_a_run_with_checkpoints_refuses_or_moves_aside(tmp_path):
    from trainer.runguard import RunDirError, check_run_dir

    out, ck = tmp_path / "run", tmp_path / "run" / "checkpoints"
    (ck / "step_0000010").mkdir(parents=True)
    (out / "wandb_run_id").write_text("old")
    with pytest.raises(RunDirError, match="step_0000010"):
        check_run_dir(out, ck, "none", None)
    check_run_dir(out, ck, "auto", None)  # resuming is what the directory is for
    check_run_dir(out, ck, "none", "move")
    aside = next(out.glob("previous-*"))
    assert (aside / "checkpoints" / "step_0000010").is_dir() and (aside / "wandb_run_id").read_text() == "old"
    assert not ck.exists() and not (out / "wandb_run_id").exists()


def test_incompatible_resume_names_every_difference(tmp_path):
    from trainer.config import load_config
    from trainer.runguard import RunDirError, check_compatible

    saved = load_config(TINY).to_dict()
    now = load_config(TINY, ["model.lm.hf_config.hidden_size=128", "train.train_vision=false", "train.tuning=lora"]).to_dict()
    with pytest.raises(RunDirError) as err:
        check_compatible({"config": saved, "manifest_fingerprint": "a" * 64}, tmp_path, now, "b" * 64, tmp_path / "tok")
    msg = str(err.value)
    assert "model.lm.hf_config.hidden_size (64 in the checkpoint, 128 now)" in msg
    assert "train.tuning" in msg and "shards fingerprint" in msg and "\n" not in msg
    check_compatible({"config": saved}, tmp_path, load_config(TINY, ["train.lr=1e-4"]).to_dict(), None, tmp_path)


def test_checkpoint_hashes_detect_tampering_and_foreign_checkpoints(tmp_path):
    from configs.atomic import atomic_write_text
    from trainer.safe_load import CheckpointTrustError, verify_checkpoint, write_complete

    ck = tmp_path / "step_0000001"
    (ck / "ds").mkdir(parents=True)
    (ck / "ds" / "a.pt").write_bytes(b"weights")
    (ck / "meta.json").write_text("{}")
    write_complete(ck, ck.name, atomic_write_text)
    verify_checkpoint(ck)
    (ck / "ds" / "a.pt").write_bytes(b"weightz")
    with pytest.raises(CheckpointTrustError, match="ds/a.pt does not match"):
        verify_checkpoint(ck)
    (ck / "COMPLETE").write_text("step_0000001")  # what DeepSpeed / older writers leave
    with pytest.raises(CheckpointTrustError, match="not written by rrg"):
        verify_checkpoint(ck)


def test_nonfinite_guard_stops_after_the_configured_number_of_checks():
    from trainer.nonfinite import NonFiniteError, NonFiniteGuard

    guard = NonFiniteGuard(limit=2)
    assert guard.observe(1, [1.0, 0.5])
    assert not guard.observe(2, [float("nan"), None])
    assert guard.observe(3, [1.0, 2.0])  # recovered: the count restarts
    assert not guard.observe(4, [1.0, float("inf")])
    with pytest.raises(NonFiniteError, match="since step 4"):
        guard.observe(5, [float("nan"), 1.0])


def test_storage_errors_are_one_line_and_remove_partial_files(tmp_path):
    import errno

    from trainer.runguard import StorageError, check_free_space, check_writable, storage_errors

    partial = tmp_path / ".tmp-step_0000002"
    partial.mkdir()
    (partial / "x").write_bytes(b"half")
    with pytest.raises(StorageError, match="no space left on device"):
        with storage_errors(tmp_path, cleanup=partial):
            raise OSError(errno.ENOSPC, "No space left on device", str(partial / "x"))
    assert not partial.exists()
    shadow = tmp_path / "out"
    shadow.write_text("a file where the output dir should be")
    with pytest.raises(StorageError, match="is not a directory"):
        check_writable(shadow / "checkpoints", "checkpoint.dir")
    with pytest.raises(StorageError, match="MiB free"):
        check_free_space(tmp_path, needed=1 << 62)


def test_driver_reads_name_a_truncated_shard_and_a_stale_manifest_is_not_rebuilt(shards, tmp_path, capsys):
    import shutil

    from shards.manifest import ManifestError, load_manifest
    from shards.reader import DataError
    from shards.textpass import iter_verified_records
    from trainer.config import load_config
    from trainer.prepare import ensure_shards

    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    manifest = load_manifest(copy)
    bad = manifest.split_shards("train")[0]
    path = copy / bad.file
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])  # truncated mid-member
    total = sum(s.num_samples for s in manifest.split_shards("train"))
    records = list(iter_verified_records(manifest, "train", "checksum", max_skip_fraction=0.5))
    assert len(records) == total - bad.num_samples
    assert f"shard {bad.file}" in capsys.readouterr().err
    with pytest.raises(DataError, match=bad.file):
        list(iter_verified_records(manifest, "train", "size", max_skip_fraction=0.01))

    data = json.loads((copy / "manifest.json").read_text())
    data["shards"][0]["sha256"] = "0" * 64  # checksums disagree, fingerprint now stale
    (copy / "manifest.json").write_text(json.dumps(data))
    before = sorted(p.name for p in copy.iterdir())
    with pytest.raises(ManifestError, match=f"fingerprint .*{data['shards'][0]['file']} sha256 .*listed 000000"):
        ensure_shards(load_config(TINY, [f"data.shards_dir={copy}"]))
    assert sorted(p.name for p in copy.iterdir()) == before, "the shard directory was rebuilt"


# -- one run per output_dir (trainer/runlock.py) -------------------------------------------------------------
_HOLD = ("import sys, time\nfrom trainer.runlock import run_lock\n"
         "with run_lock(sys.argv[1], stale_s=float(sys.argv[2])):\n    print('HELD', flush=True); time.sleep(120)")


def _holder(out: Path, stale_s: float = 120.0) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(out), str(stale_s)], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "HELD"
    return proc


def test_run_lock_refuses_a_live_run_takes_over_a_dead_one_and_waits_for_its_orphaned_workers(tmp_path, capsys):
    import socket

    from trainer.runlock import LOCK_NAME, RunLockedError, acquire

    out = tmp_path / "run"
    holder = _holder(out)
    try:
        record = json.loads((out / LOCK_NAME).read_text())
        assert (record["pid"], record["host"]) == (holder.pid, socket.gethostname()) and record["started"] <= time.time()
        t0 = time.monotonic()
        with pytest.raises(RunLockedError, match=f"in use by another training run: pid {holder.pid} on "
                                                 f"{socket.gethostname()} \\(started "):
            acquire(out, wait_s=1.0, poll_s=0.1)
        assert time.monotonic() - t0 >= 1.0, "did not wait lock_wait_s before refusing"
    finally:
        holder.kill()
        holder.wait()
    # the SIGKILLed holder's lock is still there; a worker it started is still alive: wait for it, then refuse
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (out / "pids").mkdir()
        (out / "pids" / "rank_0.json").write_text(json.dumps({"pid": worker.pid, "host": socket.gethostname(),
                                                              "started": time.time()}))
        with pytest.raises(RunLockedError, match=f"its driver is gone but its workers \\(pids {worker.pid}\\)"):
            acquire(out, stale_s=1.0, poll_s=0.1)
    finally:
        worker.kill()
        worker.wait()
    lock = acquire(out, stale_s=1.0)  # nothing of the old run is alive: taken over, and said so
    try:
        assert f"taking over the stale run lock {out / LOCK_NAME} of pid {holder.pid}" in capsys.readouterr().out
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
        mtime = (out / LOCK_NAME).stat().st_mtime
        time.sleep(1.0)
        assert (out / LOCK_NAME).stat().st_mtime > mtime, "no heartbeat"
    finally:
        lock.release()
    assert not (out / LOCK_NAME).exists()


def test_run_lock_of_another_host_stays_until_silent_and_a_requeued_slurm_job_waits_for_it(tmp_path, monkeypatch,
                                                                                           capsys):
    from trainer.runlock import LOCK_NAME, RunLockedError, acquire

    out = tmp_path / "run"
    out.mkdir()
    path = out / LOCK_NAME
    other = {"pid": 4242, "host": "node-b", "started": time.time() - 600, "token": "t-other", "slurm_job_id": "77"}
    path.write_text(json.dumps(other))  # just touched: node-b's run is alive as far as anyone can tell
    with pytest.raises(RunLockedError, match="pid 4242 on node-b .*SLURM job 77"):
        acquire(out, stale_s=60.0)
    monkeypatch.setenv("SLURM_JOB_ID", "77")  # the same job, requeued on this node: waits for node-b to go silent
    t0 = time.monotonic()
    lock = acquire(out, stale_s=1.5, poll_s=0.1)
    try:
        assert time.monotonic() - t0 >= 1.0
        text = capsys.readouterr().out
        assert "the same SLURM job, requeued" in text and "node-b has not touched it for" in text
        assert json.loads(path.read_text())["slurm_job_id"] == "77"
    finally:
        lock.release()
    old = time.time() - 3600
    path.write_text(json.dumps({**other, "slurm_job_id": "12"}))  # another job's lock, silent for an hour
    os.utime(path, (old, old))
    lock = acquire(out, stale_s=60.0)
    lock.release()


def test_second_rrg_train_into_a_running_run_dir_is_one_line_exit_4(tmp_path):
    out = tmp_path / "run"
    holder = _holder(out)
    try:
        proc = _rrg("train", TINY, f"output_dir={out}", "data.shards_dir=/nonexistent")  # refused before anything
        assert proc.returncode == 4, proc.stdout[-2000:] + proc.stderr[-2000:]
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("rrg: ") and f"pid {holder.pid} on" in lines[0], proc.stderr
        assert sorted(p.name for p in out.iterdir()) == [".run.lock"], "the refused run wrote into the directory"
    finally:
        holder.kill()
        holder.wait()


# -- known errors: one registry, never retried by Ray ---------------------------------------------------------
class _ModelFilesError(RuntimeError):
    """Stands for an error class another module registers (e.g. a model-loading error)."""


def test_a_registered_error_is_known_recorded_with_its_traceback_and_not_retried_by_ray(tmp_path, monkeypatch):
    from ray.exceptions import ActorDiedError
    from ray.train import FailureConfig
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback
    from ray.train.v2._internal.execution.failure_handling.failure_policy import FailureDecision
    from ray.train.v2.api.exceptions import WorkerGroupError

    from cluster.ray_train import _failure_policy_cls
    from trainer import runguard
    from trainer.nonfinite import NonFiniteError

    # registering is one line in KNOWN_ERRORS
    monkeypatch.setattr(runguard, "KNOWN_ERRORS", runguard.KNOWN_ERRORS + [(f"{__name__}:_ModelFilesError", 4)])
    assert runguard.known_error(_ModelFilesError("x")) == ("_ModelFilesError", 4)
    assert runguard.known_error(ValueError("x")) is None
    try:
        raise _ModelFilesError("/models/lm: config.json is not valid JSON")
    except _ModelFilesError as err:
        assert runguard.record_fatal(tmp_path, err, rank=1)
    fatal = json.loads((tmp_path / runguard.FATAL).read_text())
    assert fatal["type"] == "_ModelFilesError" and fatal["exit_code"] == 4 and fatal["rank"] == 1
    log = (tmp_path / runguard.ERROR_LOG).read_text()
    assert "rank 1" in log and "Traceback (most recent call last)" in log and "config.json is not valid" in log
    with pytest.raises(_ModelFilesError, match=r"not valid JSON \[raised in rank 1; traceback: .*worker_errors.log\]"):
        runguard.raise_recorded_fatal(tmp_path)

    policy = _failure_policy_cls()(FailureConfig(max_failures=2))
    def group(err):
        return WorkerGroupError("snippet", {0: UserExceptionWithTraceback(err, "tb"), 1: ActorDiedError()})
    assert policy.make_decision(group(_ModelFilesError("bad"))) == FailureDecision.RAISE
    assert policy.make_decision(group(NonFiniteError("nan"))) == FailureDecision.RAISE
    killed = WorkerGroupError("snippet", {1: ActorDiedError()})  # a SIGKILLed worker, a lost node: retried
    assert [policy.make_decision(killed) for _ in range(3)] == [FailureDecision.RETRY] * 2 + [FailureDecision.RAISE]
