"""Object storage end to end, against a real S3-compatible server (moto) on 127.0.0.1.

``rrg shards build`` to an s3:// URL, ``rrg train`` from those shards with ``checkpoint.dir`` on
s3, a preemption (SIGTERM -> checkpoint published -> exit 75), and the resume on a "new machine"
(fresh output_dir, fresh cache, shards streamed instead of cached) through a network that drops
connections and corrupts shard transfers, ending on exactly the losses of an uninterrupted run.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shards import storage
from tests.s3kit import CREDENTIALS, FaultProxy, moto_server
from tests.trainkit import ROOT, TINY, result, rrg, step_losses, torchrun, wait_for_step

STEPS = 60  # a SIGTERM sent at step 12 lands mid-run with room to spare (tiny steps take ~0.1 s)
LONG = [f"train.max_steps={STEPS}", "checkpoint.every_steps=5", "checkpoint.keep_last=2", "cluster.num_workers=2"]


@pytest.fixture(scope="module")
def s3():
    with moto_server() as env:
        yield env


def _env(base: dict, tmp: Path, cache: str, **extra: str) -> dict:
    env = dict(os.environ)
    env.update(base)
    env.update(WANDB_MODE="offline", WANDB_DIR=str(tmp), RRG_CACHE_DIR=str(tmp / cache), **extra)
    return env


@pytest.mark.slow
def test_build_train_preempt_and_resume_exactly_from_s3(s3, shards, tmp_path):
    bucket = "s3://rrg/e2e"
    shards_url, ckpt_url = f"{bucket}/shards", f"{bucket}/run/checkpoints"
    t0 = time.time()

    # 1. build: staged locally, published shards first, manifest last; the bytes are the local build's
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "shards", "build", TINY, "--out", shards_url],
                          cwd=ROOT, env=_env(s3, tmp_path, "cache-build"), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    remote = json.loads(storage.read_text(f"{shards_url}/manifest.json"))
    local = json.loads((Path(shards) / "manifest.json").read_text())
    assert remote["fingerprint"] == local["fingerprint"] and remote["shards"] == local["shards"]
    for shard in remote["shards"]:  # every object is there with the manifest's bytes
        storage.fetch(f"{shards_url}/{shard['file']}", tmp_path / "check" / shard["file"], shard["sha256"])
    t_build = time.time() - t0

    # the uninterrupted reference, from the local shards
    baseline = tmp_path / "baseline"
    torchrun(2, LONG + [f"data.shards_dir={shards}", f"output_dir={baseline}"])
    ref = step_losses(baseline)
    assert sorted(ref) == list(range(1, STEPS + 1))
    t_base = time.time() - t0 - t_build

    # 2. train from s3 (shards cached locally), checkpoints on s3; preempted mid-run
    common = ["train", TINY, *LONG, f"data.shards_dir={shards_url}", f"checkpoint.dir={ckpt_url}"]
    first = tmp_path / "machine-a"
    proc = rrg([*common, f"output_dir={first}"], env=_env(s3, tmp_path, "cache-a"))
    wait_for_step(first, 12, proc)
    proc.send_signal(signal.SIGTERM)
    log_a, _ = proc.communicate(timeout=300)
    assert proc.returncode == 75, log_a[-5000:]
    assert "building the demo dataset" not in log_a, "the shards on s3 were rebuilt instead of read"
    res = result(first)
    assert res["preempted"] and 12 <= res["step"] < STEPS
    stopped = res["step"]
    name = f"step_{stopped:07d}"
    assert storage.read_text(f"{ckpt_url}/latest").strip() == name, "the preemption checkpoint was not published"
    assert storage.exists(f"{ckpt_url}/{name}/COMPLETE")
    saved = {f"step_{s:07d}" for s in range(5, stopped + 1, 5)} | {name}  # every_steps=5, then the preemption
    assert storage.checkpoint_steps(ckpt_url) == sorted(saved)[-2:], "keep_last=2 was not applied remotely"
    assert storage.exists(f"{ckpt_url}/tokenizer/{storage.TOKENIZER_SUMS}")
    assert (tmp_path / "cache-a" / "shards").is_dir()
    t_first = time.time() - t0 - t_build - t_base

    # 3. a new machine: empty output_dir and cache, shards streamed (data.cache=false), and a network
    #    that resets 3 connections and corrupts 2 shard transfers.  With response checksums
    #    off (as on S3-compatible stores that keep none) only the manifest's sha256 sees the corruption.
    #    This run uses the torchrun backend (rank 0 prepares, every rank streams); the first one used Ray.
    port = int(s3["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])
    proxy = FaultProxy(("127.0.0.1", port), drop=3, corrupt={b"ustar": 2})
    second = tmp_path / "machine-b"
    env = _env(s3, tmp_path, "cache-b", AWS_ENDPOINT_URL=proxy.url, AWS_RESPONSE_CHECKSUM_VALIDATION="when_required")
    proc = rrg([*common, f"output_dir={second}", "data.cache=false", "cluster.backend=torchrun"], env=env)
    log_b, _ = proc.communicate(timeout=600)
    (tmp_path / "resume.log").write_text(log_b)
    proxy.close()
    assert proc.returncode == 0, log_b[-5000:]
    assert f"resumed from {second / 'checkpoints' / name}" in log_b, log_b[-3000:]
    assert "tokenizer of the run fetched" in log_b
    assert proxy.dropped == 3 and proxy.corrupted[b"ustar"] == 2, (proxy.dropped, proxy.corrupted)
    retried = [line for line in log_b.splitlines() if "differs from the expected" in line and "retrying" in line]
    assert len(retried) == 2, log_b[-3000:]  # each corrupted transfer caught by the sha256 and fetched again
    losses = step_losses(second)
    assert sorted(losses) == list(range(stopped + 1, STEPS + 1)), "a step was lost or repeated"
    assert [losses[s] for s in range(stopped + 1, STEPS + 1)] == [ref[s] for s in range(stopped + 1, STEPS + 1)]
    assert result(second)["step"] == STEPS
    assert storage.read_text(f"{ckpt_url}/latest").strip() == f"step_{STEPS:07d}"
    # streamed, not cached: no shard copy left behind, the spools gone with their processes
    cache_b = tmp_path / "cache-b"
    assert not (cache_b / "shards").exists()
    assert not list((cache_b / "spool").glob("*/*.tar")), list((cache_b / "spool").rglob("*"))
    # the credentials reached the workers through the environment only, never a file of the run
    secret = CREDENTIALS["AWS_SECRET_ACCESS_KEY"].encode()
    leaked = [p for out in (first, second) for p in out.rglob("*") if p.is_file() and secret in p.read_bytes()]
    assert not leaked, leaked
    print(f"\ntimes: build {t_build:.0f}s, baseline {t_base:.0f}s, first run {t_first:.0f}s, "
          f"resume {time.time() - t0 - t_build - t_base - t_first:.0f}s")
