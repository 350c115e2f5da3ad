"""Shard writer: real images in, real WebDataset tars + manifest out, read back and checked."""
from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load as st_load
from safetensors.numpy import save_file

from cluster.ray_util import RayTaskPool
from shards.adapters import AdapterError
from shards.config import BuildConfig, DataConfig, SourceConfig
from shards.inspect import inspect_shards
from shards.manifest import file_sha256, load_manifest
from shards.masks import decode_masks
from shards.writer import ShardBuildError, assign_splits, build_from_config

SIZE = 64
POOL = None  # set by the module fixture


@pytest.fixture(scope="module", autouse=True)
def ray_local():
    """The shard writer's tasks run on a real local Ray (the pool the CLI hands it)."""
    import ray

    global POOL
    temp = f"/tmp/rrgt-{os.getpid()}"
    POOL = RayTaskPool(temp_dir=temp)
    yield
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


def _gradient16(h: int, w: int, lo: int, hi: int) -> np.ndarray:
    return np.linspace(lo, hi, h * w).reshape(h, w).astype(np.uint16)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """12 studies, 6 patients: 8-bit gray PNG, 16-bit PNG, RGB JPEG; masks, kg, dotted ids."""
    root = tmp_path_factory.mktemp("src")
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (128, 128), dtype=np.uint8)
    Image.fromarray(gray).save(root / "gray.png")
    Image.fromarray(_gradient16(SIZE, SIZE, 1000, 5000)).save(root / "exact16.png")  # no resize: exact window
    Image.fromarray(_gradient16(300, 200, 200, 40000)).save(root / "big16.png")
    Image.fromarray(rng.integers(0, 256, (120, 90, 3), dtype=np.uint8)).save(root / "rgb.jpg", quality=90)
    lung = np.zeros((128, 128), np.uint8)
    lung[32:96, 16:64] = 255  # 0/255 mask
    Image.fromarray(lung).save(root / "lung.png")
    heart = np.zeros((128, 128), np.uint8)
    heart[64:128, 64:96] = 1  # 0/1 mask
    Image.fromarray(heart).save(root / "heart.png")
    save_file({"node_ids": np.arange(5, dtype=np.int64), "edge_index": np.array([[0, 1, 2, 3], [1, 2, 3, 4]]),
               "edge_type": np.array([0, 1, 0, 1]), "node_feat": rng.normal(size=(5, 8)).astype(np.float32)},
              str(root / "kg.safetensors"))
    images = [["gray.png"], ["exact16.png"], ["big16.png", "rgb.jpg"], ["rgb.jpg"]]
    lines = []
    for i in range(12):
        rec = {"study_id": f"s{i}.{i % 3}", "patient_id": f"p{i // 2}", "images": images[i % 4],
               "findings": f"Finding number {i}.", "impression": "No acute disease." if i % 2 else "",
               "labels": {"Cardiomegaly": 1 if i % 3 == 0 else 0, "Edema": -1, "Pneumonia": None}}
        if i in (0, 1):
            rec["split"] = "test"  # patient p0 explicit; the rest by hash
        if i % 4 == 0:
            rec["masks"] = {"lung": "lung.png", "heart": "heart.png"}
            rec["kg"] = "kg.safetensors"
        lines.append(json.dumps(rec))
    (root / "studies.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _cfg(src: Path, **build) -> DataConfig:
    b = BuildConfig(image_size=SIZE, samples_per_shard=3, progress=False, **build)
    return DataConfig(source=SourceConfig("jsonl", {"path": str(src / "studies.jsonl")}), build=b)


def _read_tars(out: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = defaultdict(dict)
    for tar_path in sorted(out.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for info in tar:
                key, _, ext = info.name.partition(".")
                samples[f"{tar_path.name}/{key}"][ext] = tar.extractfile(info).read()
    return samples


@pytest.fixture(scope="module")
def png_build(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("png") / "shards"
    return build_from_config(_cfg(source), seed=7, out_dir=str(out), pool=POOL)


def test_jsonl_build_reads_back(png_build, source):
    out = png_build.root
    samples = _read_tars(out)
    records = {json.loads(s["json"])["study_id"]: (k, s, json.loads(s["json"])) for k, s in samples.items()}
    assert sorted(records) == sorted(f"s{i}.{i % 3}" for i in range(12))  # one key per study
    patients = defaultdict(set)
    for sid, (tar_key, s, rec) in records.items():
        i = int(sid[1:].split(".")[0])
        assert "." not in rec["key"] and rec["key"] == tar_key.split("/")[1]
        assert tar_key.startswith(rec["split"] + "-")
        patients[rec["patient_id"]].add(rec["split"])
        assert rec["report"]["findings"] == f"Finding number {i}."
        assert ("IMPRESSION: No acute disease." in rec["report"]["text"]) == bool(i % 2)
        assert rec["labels"] == {"Cardiomegaly": 1.0 if i % 3 == 0 else 0.0, "Edema": -1.0, "Pneumonia": None}
        views = [np.asarray(Image.open(io.BytesIO(s[v["member"]]))) for v in rec["views"]]
        assert all(v.dtype == np.uint8 and max(v.shape[:2]) == SIZE for v in views)
        kind = i % 4
        if kind == 0:  # 8-bit gray 128x128 -> 64x64 gray, masks resized by nearest to the stored view
            assert views[0].shape == (SIZE, SIZE)
            assert rec["masks"]["channels"] == ["lung", "heart"] and rec["masks"]["shape"] == [2, SIZE, SIZE]
            masks = decode_masks(s["masks.bin"], rec["masks"]["shape"])
            lung, heart = np.zeros((SIZE, SIZE), bool), np.zeros((SIZE, SIZE), bool)
            lung[16:48, 8:32], heart[32:64, 32:48] = True, True
            assert np.array_equal(masks[0], lung) and np.array_equal(masks[1], heart)
            kg = st_load(s["kg.safetensors"])
            assert kg["node_feat"].shape == (5, 8) and kg["node_feat"].dtype == np.float32
            assert np.array_equal(kg["edge_index"], [[0, 1, 2, 3], [1, 2, 3, 4]])
            assert rec["kg"] == {"member": "kg.safetensors", "num_nodes": 5, "num_edges": 4}
        else:
            assert rec["masks"] is None and "masks.bin" not in s and "kg.safetensors" not in s
        if kind == 1:  # 16-bit at target size: min/max window, exactly
            src = _gradient16(SIZE, SIZE, 1000, 5000).astype(np.float64)
            expected = np.rint((src - 1000) * 255.0 / 4000).astype(np.uint8)
            assert views[0].shape == (SIZE, SIZE) and np.array_equal(views[0], expected)
            assert rec["views"][0]["source_dtype"] == "uint16"
        if kind == 2:  # 16-bit 300x200 -> 64x43 gray spanning the range; RGB JPEG second view
            assert views[0].shape == (SIZE, 43) and views[0].min() <= 2 and views[0].max() >= 253
            assert views[1].shape == (SIZE, 48, 3) and len(rec["views"]) == 2
        if kind == 3:
            assert views[0].shape == (SIZE, 48, 3) and rec["views"][0]["member"] == "view0.png"
    assert all(len(s) == 1 for s in patients.values())  # no patient across splits
    assert records["s0.0"][2]["split"] == "test" and records["s1.1"][2]["split"] == "test"


def test_manifest_matches_files(png_build):
    m = load_manifest(png_build.root)
    assert m.fingerprint == png_build.fingerprint and sum(m.splits.values()) == 12
    for shard in m.shards:
        path = m.path_of(shard)
        assert shard.num_bytes == path.stat().st_size and shard.sha256 == file_sha256(path)
        with tarfile.open(path) as tar:
            assert len([n for n in tar.getnames() if n.endswith(".json")]) == shard.num_samples
        assert shard.num_samples <= 3 and shard.file.startswith(shard.split + "-")
    assert m.preprocess["image_size"] == SIZE and m.preprocess["seed"] == 7
    assert m.adapter["name"] == "jsonl"
    mask = m.extra["mask_bytes"]
    assert mask["total"] > 0 and mask["mean_per_study"] == pytest.approx(mask["total"] / 12)
    assert not list(m.root.glob("*tmp*"))


def test_jpeg_output(source, tmp_path):
    m = build_from_config(_cfg(source, image_format="jpeg", jpeg_quality=70), seed=7, out_dir=str(tmp_path / "j"), pool=POOL)
    samples = _read_tars(m.root)
    members = {ext for s in samples.values() for ext in s}
    assert {"view0.jpg", "view1.jpg"} <= members and not any(e.endswith(".png") for e in members)
    img = Image.open(io.BytesIO(next(iter(samples.values()))["view0.jpg"]))
    assert img.format == "JPEG" and max(img.size) == SIZE
    assert m.preprocess["jpeg_quality"] == 70


def test_interrupted_build_rebuilds_only_missing(source, tmp_path, capsys):
    out = tmp_path / "r"
    first = build_from_config(_cfg(source), seed=7, out_dir=str(out), pool=POOL)
    tars = sorted(out.glob("*.tar"))
    assert len(tars) >= 3
    mtimes = {p.name: p.stat().st_mtime_ns for p in tars}
    victim = tars[1]
    victim.unlink()
    (out / "manifest.json").unlink()
    leftover = out / f"{tars[0].name}.tmp-99999"
    leftover.write_bytes(b"partial")
    capsys.readouterr()
    second = build_from_config(_cfg(source), seed=7, out_dir=str(out), pool=POOL)
    assert f"{len(tars) - 1} of {len(tars)} shards already complete" in capsys.readouterr().out
    assert not leftover.exists() and victim.exists()
    for p in sorted(out.glob("*.tar")):
        if p.name != victim.name:
            assert p.stat().st_mtime_ns == mtimes[p.name], f"{p.name} was rebuilt"
    assert second.fingerprint == first.fingerprint  # byte-identical rebuild


def test_mismatched_settings_refused(source, png_build):
    with pytest.raises(ShardBuildError, match="different preprocess settings"):
        build_from_config(_cfg(source, jpeg_quality=50), seed=7, out_dir=str(png_build.root), pool=POOL)
    with pytest.raises(ShardBuildError, match="preprocess"):
        build_from_config(_cfg(source), seed=8, out_dir=str(png_build.root), pool=POOL)


def test_malformed_jsonl_line_named(source, tmp_path):
    lines = (source / "studies.jsonl").read_text().splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines[:2] + ['{"study_id": "x", "patient_id": '] + lines[2:]) + "\n")
    cfg = DataConfig(source=SourceConfig("jsonl", {"path": str(bad), "root": str(source)}))
    with pytest.raises(AdapterError, match=r"bad\.jsonl, line 3: not valid JSON"):
        build_from_config(cfg, seed=0, out_dir=str(tmp_path / "o"), pool=POOL)
    missing = tmp_path / "missing.jsonl"
    missing.write_text(lines[0] + "\n" + json.dumps({"study_id": "y", "patient_id": "q", "report": "r"}) + "\n")
    cfg = DataConfig(source=SourceConfig("jsonl", {"path": str(missing), "root": str(source)}))
    with pytest.raises(AdapterError, match=r"missing\.jsonl, line 2: needs 'images'"):
        build_from_config(cfg, seed=0, out_dir=str(tmp_path / "o2"), pool=POOL)


def test_patient_in_two_splits_refused(source, tmp_path):
    lines = [json.loads(x) for x in (source / "studies.jsonl").read_text().splitlines()]
    lines[0]["split"], lines[1]["split"] = "train", "test"  # both belong to patient p0
    path = tmp_path / "conflict.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    cfg = DataConfig(source=SourceConfig("jsonl", {"path": str(path), "root": str(source)}))
    with pytest.raises(ShardBuildError, match="patient 'p0' appears in two splits"):
        build_from_config(cfg, seed=0, out_dir=str(tmp_path / "o"), pool=POOL)


def test_hash_splits_are_stable_and_by_patient():
    entries = [(f"p{i // 3}", None) for i in range(3000)]
    fractions = {"train": 0.8, "validate": 0.1, "test": 0.1}
    splits = assign_splits(entries, fractions, seed=1)
    assert splits == assign_splits(entries, fractions, seed=1)
    assert splits != assign_splits(entries, fractions, seed=2)
    assert all(len({splits[j] for j in range(i, i + 3)}) == 1 for i in range(0, 3000, 3))
    share = {k: splits.count(k) / 3000 for k in fractions}
    assert share["train"] == pytest.approx(0.8, abs=0.05) and share["test"] == pytest.approx(0.1, abs=0.04)


def test_inspect_renders_png(png_build, tmp_path, capsys):
    m = load_manifest(png_build.root)
    split = next(s.split for s in m.shards)
    out = inspect_shards(str(png_build.root), out_png=str(tmp_path / "i.png"), index=0, split=split)
    text = capsys.readouterr().out
    assert "fingerprint:  " + m.fingerprint in text and "jsonl" in text
    img = Image.open(out)
    assert img.height == 512 and img.width > 800 and out.stat().st_size > 20_000
    assert np.asarray(img.convert("L")).std() > 20  # not blank


def test_demo_adapter_build(tmp_path):
    cfg = DataConfig(source=SourceConfig("demo", {"num_studies": 60, "seed": 3}),
                     build=BuildConfig(image_size=256, samples_per_shard=20, progress=False))
    m = build_from_config(cfg, seed=1, out_dir=str(tmp_path / "demo"), pool=POOL)
    assert sum(m.splits.values()) == 60
    assert 0 < m.extra["mask_bytes"]["mean_per_study"] <= 10_000
    samples = _read_tars(m.root)
    assert len(samples) == 60
    rec = json.loads(next(iter(samples.values()))["json"])
    assert rec["masks"]["shape"][1:] == [rec["views"][0]["height"], rec["views"][0]["width"]]


def test_ensure_ray_reuses_loopback_instance():
    import ray

    from cluster.ray_util import _checked_temp_dir, ensure_ray

    ensure_ray(num_cpus=1)  # already up: a no-op, not a second cluster
    assert ray.cluster_resources()["CPU"] == 2
    assert {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]} == {"127.0.0.1"}
    with pytest.raises(ValueError, match="socket paths"):
        _checked_temp_dir("/tmp/" + "x" * 60)
