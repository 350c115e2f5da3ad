"""Hostile images in shard builds and in ``rrg shards masks``: checked from the header before decoding.

A decompression bomb (a 24,000 x 24,000 PNG of 560 KB), a zero-byte file and a truncated file among
good radiographs are skipped and counted by reason; the build finishes with its manifest, and its
peak memory stays far below what decoding the bomb would take (576 MB for its grey pixels alone).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests import fixture_trees_other as other
from shards.adapter_kit import SkipStudy
from shards.adapters import make_adapter
from shards.config import BuildConfig, DataConfig, SourceConfig
from tests.fixture_trees import make_mimic, write_jpeg
from shards.writer import BUILD_SUMMARY, build_from_config
from tests.shardkit import png_bomb

ROOT = Path(__file__).resolve().parent.parent
REASONS = ("image_too_large", "empty_image_file", "truncated_image")


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    return png_bomb(tmp_path_factory.mktemp("bomb") / "bomb.png")  # 24,000 x 24,000: Pillow's own limit


def _dicom_tree(root: Path) -> Path:
    from tests.dicomkit import write_dicom

    img = np.random.default_rng(1).integers(0, 4096, size=(40, 32)).astype(np.uint16)
    for n in range(3):
        write_dicom(root / "d" / f"{n}.dcm", img, study_uid=f"1.2.3.{n}", patient_id=f"P{n}")
    (root / "r.csv").write_text("study_instance_uid,report\n" + "".join(
        f'1.2.3.{n},"FINDINGS: Clear {n}. IMPRESSION: Normal."\n' for n in range(3)))
    return root


def _dicom_bomb(path: Path) -> None:
    """A DICOM whose header promises 24,000 x 24,000 pixels (and holds none: nothing may be read)."""
    from tests.dicomkit import write_dicom

    write_dicom(path, np.broadcast_to(np.uint16(0), (24_000, 24_000)), pixel_data=False, study_uid="1.2.3.0",
                patient_id="P0")


MAKERS = {
    "mimic_cxr_jpg": lambda r: {"root": str(make_mimic(r))},
    "padchest": lambda r: {"root": str(other.make_padchest(r))},
    "iu_xray": lambda r: {"root": str(other.make_iu_xray(r))},
    "r2gen_json": lambda r: {"root": str(other.make_r2gen(r))},
    "chexpert_plus": lambda r: {"root": str(other.make_chexpert_plus(r))},
    "dicom_folder": lambda r: {"root": str(_dicom_tree(r) / "d"), "reports": str(r / "r.csv"),
                               "salt_file": str(r / "salt")},
}


def _first_views(adapter, n: int) -> list[str]:
    """View 0 of the first ``n`` studies the adapter loads."""
    found = []
    for i in range(len(adapter.entries())):
        try:
            found.append(adapter.load(i).views[0].path)
        except SkipStudy:
            continue
        if len(found) == n:
            break
    return found


def _build(args: dict, name: str, out: Path, **build) -> dict:
    cfg = DataConfig(source=SourceConfig(name, args),
                     build=BuildConfig(image_size=32, samples_per_shard=2, progress=False, max_skip_fraction=0.9,
                                       **build))
    manifest = build_from_config(cfg, seed=3, out_dir=str(out))
    assert (Path(manifest.root) / "manifest.json").is_file()
    return json.loads((Path(manifest.root) / BUILD_SUMMARY).read_text())


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_a_bomb_in_every_adapter_is_skipped_by_reason_without_being_decoded(name, bomb, tmp_path):
    args = MAKERS[name](tmp_path / "src")
    target, = _first_views(make_adapter(name, dict(args), seed=3), 1)
    if name == "dicom_folder":
        _dicom_bomb(Path(target))
    else:
        shutil.copyfile(bomb, target)
    summary = _build(args, name, tmp_path / "shards")
    counts = summary["skipped"]["counts"]
    assert counts.get("image_too_large", 0) + counts.get("view_image_too_large", 0) == 1, counts
    examples = summary["skipped"]["examples"].get("image_too_large", []) + \
        summary["skipped"]["examples"].get("view_image_too_large", [])
    assert os.path.basename(target) in examples[0] and "image_too_large" in examples[0], examples


_MEMORY = """
import json, resource, shutil, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from tests.test_hostile_images import _build, _first_views
from shards.adapters import make_adapter
from tests.fixture_trees import make_mimic, write_jpeg
from tests.shardkit import png_bomb
work = Path(sys.argv[2])
def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
args = {"root": str(make_mimic(work / "src"))}
clean = _build(args, "mimic_cxr_jpg", work / "clean")
peak_clean = rss_mb()
bomb, empty, cut = _first_views(make_adapter("mimic_cxr_jpg", dict(args), seed=3), 3)
png_bomb(bomb)                                   # 24,000 x 24,000, 560 KB on disk
Path(empty).write_bytes(b"")                     # zero bytes
write_jpeg(Path(cut), 256, 256, seed=9)          # a good 256 px JPEG, then cut in half: header intact
data = Path(cut).read_bytes(); Path(cut).write_bytes(data[: len(data) // 2])
hostile = _build(args, "mimic_cxr_jpg", work / "hostile")
print(json.dumps({"clean": clean, "hostile": hostile, "peak_clean_mb": peak_clean, "peak_hostile_mb": rss_mb(),
                  "files": [bomb, empty, cut]}))
"""


def test_bomb_empty_and_truncated_files_are_counted_and_memory_stays_bounded(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _MEMORY, str(ROOT), str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    clean, hostile = got["clean"]["skipped"]["counts"], got["hostile"]["skipped"]["counts"]
    found = {r: hostile.get(r, 0) + hostile.get(f"view_{r}", 0) for r in REASONS}
    assert found == {r: 1 for r in REASONS}, hostile
    examples = json.dumps(got["hostile"]["skipped"]["examples"])
    for path in got["files"]:
        assert os.path.basename(path) in examples
    assert "576.0 MP" in examples or "576000000 pixels" in examples  # what the header promised, never decoded
    assert {k: v for k, v in hostile.items() if not any(r in k for r in REASONS)} == \
        {k: v for k, v in clean.items()}, "the hostile files changed other skip counts"
    # decoding the bomb would need >= 576 MB; the build grew by less than a tenth of that
    assert got["peak_hostile_mb"] - got["peak_clean_mb"] < 57, got


def test_masks_pass_skips_a_hostile_stored_view_and_counts_it(tmp_path):
    import torch

    from configs.parallel import SerialPool
    from shards.config import PassesConfig
    from shards.passes.masks.config import MasksConfig
    from shards.passes.masks.run import masks_from_config
    from shards.passes.masks.segmenter import UNet
    from tests.shardkit import sample_key, write_shard_set

    bomb_bytes = png_bomb(tmp_path / "bomb.png", side=10_000).read_bytes()  # 100 MP: over 50 MP, under Pillow's
    hostile = {sample_key("train", 0, 1): bomb_bytes, sample_key("train", 1, 0): b""}
    manifest = write_shard_set(tmp_path / "shards", {"train": [3, 2], "test": [2]}, override_view=hostile)
    torch.manual_seed(0)
    unet = str(tmp_path / "unet")
    UNet(1, 2, width=4, depth=2).save_pretrained(unet, ["lung", "heart"], input_size=32)
    side, _ = masks_from_config(DataConfig(shards_dir=str(manifest.root), passes=PassesConfig(masks=MasksConfig(path=unet))),
                                pool=SerialPool())
    meta = json.loads((Path(side.root) / "sidecar.json").read_text())["meta"]
    assert meta["skipped"]["counts"] == {"empty_image_file": 1, "image_too_large": 1}
    assert "10000 x 10000 = 100.0 MP" in json.dumps(meta["skipped"]["examples"])
    assert sum(v["num_entries"] for v in side.shards.values()) == 7 - 2
