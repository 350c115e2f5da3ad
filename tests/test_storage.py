"""Shards and checkpoints on object storage: a real S3-compatible server (moto) on 127.0.0.1."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from shards import storage
from tests.trainkit import free_port


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import boto3

    boto3.client("s3").create_bucket(Bucket="rrg")
    yield "s3://rrg"
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


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
