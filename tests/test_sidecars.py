"""Sidecars (per-study annotation overlays and tensors beside the shards) and dataset assets."""
import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import save

from configs.parallel import SerialPool
from shards.manifest import load_manifest
from shards.reader import make_loader
from shards.config import DataConfig
from shards.sidecars import SidecarError, build_sidecar, copy_assets, load_asset, task_batches, write_asset


def topic_members(sample, context):
    """An overlay entry per study: a function of the study's own record only."""
    return {f"{context}.json": json.dumps({"first_word": sample.report.split()[1]}).encode()}


def tensor_members(sample, context):
    if sample.key.endswith("3"):
        return None  # a study the producer leaves out
    return {"side.safetensors": save({"x": np.full((2,), len(sample.key), dtype=np.float16)})}


def _items(shards_dir, split):
    cfg = DataConfig(shards_dir=shards_dir, loader_workers=0)
    loader = make_loader(cfg, split, rank=0, world_size=1, batch_size=4, seed=0, mode="eval",
                         builder=lambda s: {"key": s.key, "ann": s.annotations, "t": s.tensors},
                         collate=lambda items: {"items": items})
    return [it for b in loader for it in b["items"]], loader


@pytest.fixture()
def copy(shards, tmp_path):
    out = tmp_path / "shards"
    shutil.copytree(shards, out)
    return str(out)


def test_sidecar_joins_by_key_covers_only_its_splits_and_changes_fingerprint(copy):
    base = load_manifest(copy).dataset_fingerprint
    info = build_sidecar(copy, "topics", kind="annotation", producer={"name": "test"}, version="1",
                         reads_splits=["train"], splits=["train"], make_members=topic_members, context="topics",
                         pool=SerialPool())
    assert info.reads_splits == ["train"] and set(info.shards) == {s.file for s in load_manifest(copy).shards
                                                                  if s.split == "train"}
    m = load_manifest(copy)
    assert m.dataset_fingerprint != base and m.fingerprint == load_manifest(copy).fingerprint
    train, _ = _items(copy, "train")
    assert train and all(it["ann"]["topics"]["first_word"] for it in train)
    val, _ = _items(copy, "validate")
    assert val and all(it["ann"] == {} for it in val)

    build_sidecar(copy, "side", kind="tensors", producer={"name": "t"}, version="1", reads_splits=[],
                  splits=["validate"], make_members=tensor_members, pool=SerialPool())
    val, _ = _items(copy, "validate")
    for it in val:
        if it["key"].endswith("3"):
            assert "side" not in it["t"]
        else:
            assert it["t"]["side"]["x"].tolist() == [len(it["key"])] * 2


class WidePool(SerialPool):
    """A serial pool that claims several workers, so build_sidecar batches shards differently."""

    parallelism = 3

    def __init__(self):
        self.calls = 0

    def map_unordered(self, fn, items, **kw):
        items = list(items)
        self.calls += len(items)
        return super().map_unordered(fn, items, **kw)


def test_batched_tasks_write_the_same_tars(copy):
    batches = task_batches(list(range(7)), 2)
    assert len(batches) == 4 and sum(batches, []) == list(range(7)) and {len(b) for b in batches} <= {1, 2}
    assert task_batches([], 4) == [] and [len(b) for b in task_batches(list(range(5)), 8)] == [1] * 5
    assert task_batches(list("abcd"), 1, weights=[3, 1, 1, 1]) == [["a"], ["b", "c", "d"]]  # equal work per task
    files = sorted(s.file for s in load_manifest(copy).shards)
    wide = WidePool()
    runs = [build_sidecar(copy, name, kind="tensors", producer={"name": "t"}, version="1", reads_splits=[],
                          splits=sorted(load_manifest(copy).splits), make_members=tensor_members, pool=pool,
                          tasks_per_worker=tpw)
            for name, pool, tpw in (("one", SerialPool(), 1), ("wide", wide, 1))]
    assert wide.calls == len(task_batches(files, 3, 1)) < len(files)
    for info in runs:
        assert sorted(info.shards) == files
    assert all(runs[0].path(f).read_bytes() == runs[1].path(f).read_bytes() for f in files)


def test_corrupt_sidecar_is_a_counted_skip_naming_it(copy):
    info = build_sidecar(copy, "topics", kind="annotation", producer={"name": "test"}, version="1",
                         reads_splits=["train"], splits=["validate"], make_members=topic_members, context="topics")
    path = info.path(next(iter(info.shards)))
    data = bytearray(path.read_bytes())
    data[700] ^= 0xFF
    path.write_bytes(bytes(data))
    cfg = DataConfig(shards_dir=copy, loader_workers=0, max_skip_fraction=0.99)
    loader = make_loader(cfg, "validate", rank=0, world_size=1, batch_size=4, seed=0, mode="eval",
                         builder=lambda s: {"key": s.key}, collate=lambda items: {"items": items})
    list(loader)
    assert loader.skipped and "sidecar 'topics'" in loader.skip_log[0][2] and "validate-000000.tar" in loader.skip_log[0][2]


def test_asset_roundtrip_verified_and_copied(copy, tmp_path):
    asset = write_asset(copy, "ontology", {"topics.json": b'{"a": 1}', "sub/x.bin": b"\x00\x01"},
                        producer={"name": "t"}, version="2", reads_splits=["train"])
    assert asset.read_json("topics.json") == {"a": 1} and asset.meta["reads_splits"] == ["train"]
    before = load_manifest(copy).dataset_fingerprint
    write_asset(copy, "ontology", {"topics.json": b'{"a": 2}'}, producer={"name": "t"}, version="2",
                reads_splits=["train"])
    assert load_manifest(copy).dataset_fingerprint != before
    copy_assets(copy, ["ontology"], tmp_path / "export")
    assert load_asset(tmp_path / "export" / "assets" / "ontology").read_json("topics.json") == {"a": 2}
    (tmp_path / "export" / "assets" / "ontology" / "topics.json").write_text('{"a": 3}')
    with pytest.raises(SidecarError, match="differs from its recorded sha256"):
        load_asset(tmp_path / "export" / "assets" / "ontology")


def test_named_study_tensors_round_trip_through_a_shard(tmp_path):
    """Study.tensors -> <key>.<name>.safetensors in the shard -> DecodedSample.tensors[name], dtypes kept."""
    from shards.config import BuildConfig
    from shards.demo import make_study
    from shards.reader import decode
    from shards.writer import pack_study

    study = make_study(3, image_size=64)
    soft = (np.linspace(0, 1, 2 * 8 * 8).reshape(2, 8, 8) * 255).astype(np.uint8)
    study.tensors = {"softmasks": {"probs": soft, "scale": np.array([1 / 255], dtype=np.float16)}}
    sample, _ = pack_study(study, 3, "train", "k3", BuildConfig(image_size=64))
    decoded = decode("k3", "s.tar", {k: v for k, v in sample.items()})
    assert decoded.tensors["softmasks"]["probs"].dtype == np.uint8
    assert np.array_equal(decoded.tensors["softmasks"]["probs"], soft)
    assert json.loads(sample["json"])["tensors"]["softmasks"]["probs"] == {"dtype": "uint8", "shape": [2, 8, 8]}
