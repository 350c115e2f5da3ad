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
