"""Shards and checkpoints on object storage: a real S3-compatible server (moto) on 127.0.0.1."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shards import storage
from tests.s3kit import FaultProxy, moto_server
from tests.trainkit import TINY


@pytest.fixture(scope="module")
def s3():
    with moto_server():
        yield "s3://rrg"


@contextlib.contextmanager
def through(proxy: FaultProxy):
    """This process's storage calls go through ``proxy`` (s3fs keeps one client per endpoint)."""
    import s3fs

    old = os.environ["AWS_ENDPOINT_URL"]
    os.environ["AWS_ENDPOINT_URL"] = proxy.url
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        yield proxy
    finally:
        os.environ["AWS_ENDPOINT_URL"] = old
        s3fs.S3FileSystem.clear_instance_cache()
        proxy.close()


def fault_proxy(**faults) -> FaultProxy:
    return FaultProxy(("127.0.0.1", int(os.environ["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])), **faults)


def flaky(monkeypatch, failures: int) -> list[str]:
    """The next ``failures`` remote opens raise a transient error, as a dropped connection would."""
    seen: list[str] = []
    real = storage._open

    def open_(fs, path, mode):
        if len(seen) < failures:
            seen.append(path)
            raise ConnectionError(f"injected transient failure on {path}")
        return real(fs, path, mode)

    monkeypatch.setattr(storage, "_open", open_)
    monkeypatch.setattr(storage, "BASE_DELAY_S", 0.01)
    return seen


def test_shards_round_trip_verified_with_retries(s3, shards, tmp_path, monkeypatch):
    from shards.manifest import load_manifest

    url = f"{s3}/shards"
    injected = flaky(monkeypatch, 3)
    storage.publish_shards(Path(shards), url)
    assert len(injected) == 3, "the injected failures were not hit"
    monkeypatch.setenv("RRG_CACHE_DIR", str(tmp_path / "cache"))
    manifest = load_manifest(url)  # the loader's entry point accepts the URL itself
    local = load_manifest(shards)
    assert manifest.fingerprint == local.fingerprint and manifest.splits == local.splits
    for shard in manifest.shards:
        assert (Path(manifest.root) / shard.file).read_bytes() == (Path(shards) / shard.file).read_bytes()


def test_manifest_is_uploaded_last_and_bad_bytes_never_land(s3, shards, tmp_path, monkeypatch):
    url = f"{s3}/order"
    order: list[str] = []
    real = storage.upload
    monkeypatch.setattr(storage, "upload", lambda local, dest: (order.append(dest), real(local, dest)))
    storage.publish_shards(Path(shards), url)
    assert order[-1].endswith("/manifest.json") and len(order) == len(json.loads(
        (Path(shards) / "manifest.json").read_text())["shards"]) + 1
    order.clear()
    storage.publish_shards(Path(shards), url)  # the same build again: already there
    assert order == []
    first = json.loads((Path(shards) / "manifest.json").read_text())["shards"][0]
    storage.write_text(f"{url}/{first['file']}", "torn")  # the object changed behind the manifest's back
    with pytest.raises(storage.StorageError, match=first["file"]):
        storage.fetch(f"{url}/{first['file']}", tmp_path / "x.tar", first["sha256"])
    assert not (tmp_path / "x.tar").exists()


def _checkpoint(root: Path, step: int) -> Path:
    d = root / f"step_{step:07d}"
    (d / "ds").mkdir(parents=True)
    (d / "ds" / "shard_0.pt").write_bytes(os.urandom(2048))
    (d / "meta.json").write_text(json.dumps({"step": step}))
    (d / "COMPLETE").write_text("")
    return d


def test_checkpoint_publish_order_and_fetch(s3, tmp_path, monkeypatch):
    url = f"{s3}/run/checkpoints"
    order: list[str] = []
    real_upload, real_write = storage.upload, storage.write_text
    monkeypatch.setattr(storage, "upload", lambda local, dest: (order.append(dest), real_upload(local, dest)))
    monkeypatch.setattr(storage, "write_text", lambda dest, text: (order.append(dest), real_write(dest, text)))
    assert storage.fetch_latest_checkpoint(url, tmp_path / "empty") is None
    first = _checkpoint(tmp_path / "a", 5)
    storage.publish_checkpoint(first, url)
    assert order[-2].endswith("step_0000005/COMPLETE") and order[-1].endswith("/latest")
    assert all("COMPLETE" not in o and "latest" not in o for o in order[:-2])
    flaky(monkeypatch, 2)
    got = storage.fetch_latest_checkpoint(url, tmp_path / "b")
    assert got.name == "step_0000005" and (got / "ds" / "shard_0.pt").read_bytes() == \
        (first / "ds" / "shard_0.pt").read_bytes()
    assert (tmp_path / "b" / "latest").read_text().strip() == "step_0000005"
    # a checkpoint whose COMPLETE never arrived is refused, not half-loaded
    storage.write_text(f"{url}/latest", "step_0000009\n")
    storage.write_text(f"{url}/step_0000009/meta.json", "{}")
    with pytest.raises(storage.StorageError, match="no COMPLETE marker"):
        storage.fetch_latest_checkpoint(url, tmp_path / "c")


# ---- real network faults (tests/s3kit.py's proxy), the cache, the streamed reader ----------------------------

def test_torn_transfers_are_caught_and_fetched_again(s3, shards, tmp_path, monkeypatch):
    """A corrupted response fails the store's checksum (botocore: FlexibleChecksumError, not an OSError)
    or, with response validation off, the manifest's sha256; both are retried; resets are absorbed."""
    monkeypatch.setattr(storage, "BASE_DELAY_S", 0.01)
    url = f"{s3}/torn"
    storage.publish_shards(Path(shards), url)
    first = json.loads((Path(shards) / "manifest.json").read_text())["shards"][0]
    for validation, caught in (("when_supported", "FlexibleChecksumError"), ("when_required", "ChecksumMismatch")):
        monkeypatch.setenv("AWS_RESPONSE_CHECKSUM_VALIDATION", validation)
        with through(fault_proxy(drop=2, corrupt={b"ustar": 2})) as proxy:
            dest = tmp_path / validation / first["file"]
            storage.fetch(f"{url}/{first['file']}", dest, first["sha256"])
        assert proxy.dropped == 2 and proxy.corrupted[b"ustar"] == 2
        assert dest.read_bytes() == (Path(shards) / first["file"]).read_bytes()
    # the same faults on every attempt: one line naming the URL, nothing left behind
    monkeypatch.setenv("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")
    with through(fault_proxy(corrupt={b"ustar": 99})):
        with pytest.raises(storage.StorageError, match=f"{first['file']}: failed after 5 attempts") as err:
            storage.fetch(f"{url}/{first['file']}", tmp_path / "bad" / first["file"], first["sha256"])
    assert isinstance(err.value.last, storage.ChecksumMismatch)
    assert not list((tmp_path / "bad").iterdir())


def test_cache_follows_the_manifest_not_the_file_size(s3, shards, tmp_path):
    """A shard rewritten with the same size but other bytes (and a new manifest) is fetched again."""
    url, cache = f"{s3}/cache", tmp_path / "cache"
    storage.publish_shards(Path(shards), url)
    local = storage.sync_shards(url, cache)
    manifest = json.loads((Path(shards) / "manifest.json").read_text())
    shard = manifest["shards"][0]
    changed = bytearray((Path(shards) / shard["file"]).read_bytes())
    changed[600] ^= 1
    (tmp_path / "new.tar").write_bytes(bytes(changed))
    storage.upload(tmp_path / "new.tar", f"{url}/{shard['file']}")
    shard["sha256"] = __import__("hashlib").sha256(bytes(changed)).hexdigest()
    storage.write_text(f"{url}/manifest.json", json.dumps(manifest))
    assert storage.sync_shards(url, cache) == local
    assert (local / shard["file"]).read_bytes() == bytes(changed)


def _pixels(sample):
    return {"key": sample.key, "px": np.asarray(sample.images[0])}


def _epoch(loader, n=None):
    out = []
    for batch in loader:
        out.append((batch["keys"], batch["px"].numpy()))
        if len(out) == n:
            break
    return out


def test_streamed_loader_reads_what_the_local_one_reads_and_resumes(s3, shards, tmp_path, monkeypatch):
    """data.cache=false: nothing copied up front, batches (keys and pixels) equal to the local shards',
    through a forked loader worker, and a resumed streamed loader continues exactly."""
    from shards.manifest import load_manifest
    from shards.reader import ShardLoader

    monkeypatch.setenv("RRG_CACHE_DIR", str(tmp_path / "cache"))
    url = f"{s3}/stream"
    storage.publish_shards(Path(shards), url)
    kw = dict(rank=0, world_size=2, batch_size=4, seed=3, num_workers=1, shuffle_buffer=16, builder=_pixels)
    local = _epoch(ShardLoader(load_manifest(shards), "train", **kw))
    streamed_manifest = load_manifest(url, cache=False)
    assert sorted(p.name for p in Path(streamed_manifest.root).iterdir()) == ["manifest.json", storage.STREAM_MARKER]
    first = ShardLoader(streamed_manifest, "train", **kw)
    head = _epoch(first, 3)
    resumed = ShardLoader(load_manifest(url, cache=False), "train", **kw)
    resumed.load_state_dict(first.state_dict())
    got = head + _epoch(resumed)
    assert [k for k, _ in got] == [k for k, _ in local]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(got, local))
    # the driver's passes over the records (tokenizer training, benches) stream the same way
    from shards.manifest import iter_json_records
    from shards.textpass import iter_verified_records

    want = [r["study_id"] for r in iter_json_records(load_manifest(shards), "train")]
    assert [r["study_id"] for r in iter_verified_records(streamed_manifest, "train")] == want
    assert [r["study_id"] for r in iter_json_records(streamed_manifest, "train")] == want
    assert not (tmp_path / "cache" / "shards").exists()
    import gc

    gc.collect()
    assert not list((tmp_path / "cache" / "spool").rglob("*.tar")), "a spool outlived its reader"


def test_streamed_shard_rewritten_behind_the_manifest_is_skipped_like_a_corrupt_one(s3, shards, tmp_path,
                                                                                    monkeypatch):
    from shards.manifest import load_manifest
    from shards.reader import ShardLoader

    monkeypatch.setenv("RRG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(storage, "BASE_DELAY_S", 0.01)
    url = f"{s3}/rewritten"
    storage.publish_shards(Path(shards), url)
    train = [s for s in json.loads((Path(shards) / "manifest.json").read_text())["shards"] if s["split"] == "train"]
    storage.upload(Path(shards) / train[1]["file"], f"{url}/{train[0]['file']}")  # a valid tar, the wrong one
    loader = ShardLoader(load_manifest(url, cache=False), "train", rank=0, world_size=1, batch_size=4, seed=3,
                         num_workers=0, shuffle_buffer=16, max_skip_fraction=0.5)
    batches = sum(1 for _ in loader)
    assert batches == sum(s["num_samples"] for s in train) // 4  # slots refilled, batch count unchanged
    assert {shard for _, shard, _ in loader.skip_log} == {train[0]["file"]}
    assert len(loader.skip_log) == train[0]["num_samples"]
    assert all("sha256 differs from the manifest" in why for _, _, why in loader.skip_log)


def test_sidecars_and_assets_travel_with_the_shards(s3, shards, tmp_path, monkeypatch):
    import shutil

    from configs.parallel import SerialPool
    from shards.manifest import load_manifest
    from shards.sidecars import build_sidecar, write_asset
    from tests.test_sidecars import topic_members

    monkeypatch.setenv("RRG_CACHE_DIR", str(tmp_path / "cache"))
    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    build_sidecar(copy, "topics", kind="annotation", producer={"name": "test"}, version="1", reads_splits=["train"],
                  splits=["train"], make_members=topic_members, context="topics", pool=SerialPool())
    write_asset(copy, "bank", {"rows.json": b"[1, 2]"}, producer={"name": "test"}, version="1", reads_splits=["train"])
    url = f"{s3}/with-sidecars"
    storage.publish_shards(copy, url)
    local = load_manifest(copy)
    for cache in (True, False):
        got = load_manifest(url, cache=cache)
        assert got.dataset_fingerprint == local.dataset_fingerprint  # what checkpoints and loader states keep
        assert set(got.sidecars) == {"topics"} and got.assets["bank"].read_json("rows.json") == [1, 2]


def _real_checkpoint(root: Path, step: int) -> Path:
    from trainer.safe_load import write_complete

    d = root / f"step_{step:07d}"
    (d / "ds").mkdir(parents=True)
    (d / "ds" / "shard_0.pt").write_bytes(os.urandom(4096))
    (d / "meta.json").write_text(json.dumps({"global_step": step, "wandb_id": "w123"}))
    write_complete(d, d.name, lambda p, t: p.write_text(t))
    return d


def test_checkpoint_files_are_verified_pruned_and_the_tokenizer_travels(s3, tmp_path, monkeypatch):
    from trainer.runguard import tokenizer_hash
    from trainer.safe_load import verify_checkpoint

    monkeypatch.setattr(storage, "BASE_DELAY_S", 0.01)
    url = f"{s3}/run2/checkpoints"
    tok = tmp_path / "tokenizer"
    tok.mkdir()
    (tok / "tokenizer.json").write_text('{"vocab": [1, 2, 3]}')
    for step in (1, 2, 3):
        storage.publish_checkpoint(_real_checkpoint(tmp_path / "local", step), url, tokenizer_dir=tok, keep_last=2)
    assert storage.checkpoint_steps(url) == ["step_0000002", "step_0000003"]
    assert storage.fetch_tokenizer(url, tmp_path / "tok2") and tokenizer_hash(tmp_path / "tok2") == tokenizer_hash(tok)
    # a file that changed behind COMPLETE's back: refused, naming it; nothing half-fetched left
    storage.write_text(f"{url}/step_0000003/ds/shard_0.pt", "torn")
    with pytest.raises(storage.StorageError, match="shard_0.pt"):
        storage.fetch_latest_checkpoint(url, tmp_path / "b")
    assert not (tmp_path / "b" / "step_0000003").exists() and not (tmp_path / "b" / "latest").exists()
    storage.upload(tmp_path / "local" / "step_0000003" / "ds" / "shard_0.pt", f"{url}/step_0000003/ds/shard_0.pt")
    got = storage.fetch_latest_checkpoint(url, tmp_path / "b")
    verify_checkpoint(got)  # every file as rrg recorded it
    assert (tmp_path / "b" / "latest").read_text().strip() == "step_0000003"


def test_resume_none_over_remote_checkpoints_is_refused_or_cleared(s3, tmp_path, monkeypatch):
    from trainer.config import load_config
    from trainer.prepare import stage_remote_checkpoint
    from trainer.runguard import RunDirError

    url = f"{s3}/run3/checkpoints"
    storage.publish_checkpoint(_real_checkpoint(tmp_path / "local", 4), url)
    cfg = load_config(TINY, [f"checkpoint.dir={url}", "checkpoint.resume=none", f"output_dir={tmp_path / 'out'}"])
    with pytest.raises(RunDirError, match=f"{url} already holds checkpoints \\(step_0000004\\)"):
        stage_remote_checkpoint(cfg)
    cfg.checkpoint.overwrite = "move"
    stage_remote_checkpoint(cfg)
    assert storage.checkpoint_steps(url) == [] and not storage.exists(f"{url}/latest")
    aside = [n for n in storage.listdir(url) if n.startswith("previous-")]
    assert len(aside) == 1 and storage.checkpoint_steps(f"{url}/{aside[0]}") == ["step_0000004"]
    # --resume auto on a fresh output_dir: the checkpoint, and the run's W&B id
    cfg = load_config(TINY, [f"checkpoint.dir={url}/{aside[0]}", f"output_dir={tmp_path / 'fresh'}"])
    stage_remote_checkpoint(cfg)
    assert (tmp_path / "fresh" / "checkpoints" / "step_0000004" / "COMPLETE").is_file()
    assert (tmp_path / "fresh" / "wandb_run_id").read_text() == "w123"
    # --resume s3://.../step_N: that checkpoint, fetched into the cache
    monkeypatch.setenv("RRG_CACHE_DIR", str(tmp_path / "cache"))
    cfg = load_config(TINY, [f"checkpoint.resume={url}/{aside[0]}/step_0000004", f"output_dir={tmp_path / 'c'}"])
    stage_remote_checkpoint(cfg)
    assert Path(cfg.checkpoint.resume).is_relative_to(tmp_path / "cache")
    assert (Path(cfg.checkpoint.resume) / "COMPLETE").is_file() and Path(cfg.checkpoint.resume).name == "step_0000004"
    # 'latest' naming a checkpoint whose upload never finished: refused in one line, nothing fetched
    storage.write_text(f"{url}/latest", "step_0000009\n")
    storage.write_text(f"{url}/step_0000009/meta.json", "{}")
    cfg = load_config(TINY, [f"checkpoint.dir={url}", f"output_dir={tmp_path / 'd'}"])
    with pytest.raises(RunDirError, match="step_0000009: named by 'latest' but has no COMPLETE marker"):
        stage_remote_checkpoint(cfg)
    assert not (tmp_path / "d" / "checkpoints").exists()


def test_a_changed_endpoint_gets_its_own_client(s3, monkeypatch):
    """One process, one server after another (a test module after another, a job moving to another
    store): the second is reached, not the first one's closed endpoint (fsspec keeps filesystems)."""
    monkeypatch.setattr(storage, "BASE_DELAY_S", 0.01)
    for word in ("first", "second"):
        with moto_server():  # a fresh port each time; the first server is stopped before the second starts
            storage.write_text(f"{s3}/endpoint-check", word)
            assert storage.read_text(f"{s3}/endpoint-check") == word


@pytest.mark.parametrize("backend", ["ray", "torchrun"])
def test_output_dir_url_is_refused_before_anything_is_made(tmp_path, backend):
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "train", TINY, "output_dir=s3://rrg/runs/x",
                           f"cluster.backend={backend}"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "'output_dir'" in proc.stderr and "checkpoint.dir=s3://" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert list(tmp_path.iterdir()) == [], "something was created (a local 's3:' dir?)"


def test_object_storage_settings_reach_the_workers(monkeypatch):
    from trainer.config import load_config
    from trainer.prepare import worker_env

    forwarded = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_SESSION_TOKEN": "t",
                 "AWS_ENDPOINT_URL": "http://10.0.0.5:9000", "AWS_ENDPOINT_URL_S3": "http://10.0.0.5:9000",
                 "AWS_DEFAULT_REGION": "eu-west-1", "AWS_PROFILE": "lab", "AWS_CA_BUNDLE": "/etc/ca.pem",
                 "FSSPEC_S3_ANON": "false", "RRG_CACHE_DIR": "/scratch/rrg"}
    for k, v in forwarded.items():
        monkeypatch.setenv(k, v)
    env = worker_env(load_config(TINY))
    assert {k: env.get(k) for k in forwarded} == forwarded
