"""``rrg shards masks``: a tiny random U-Net saved in its real layout, run over the demo shards on Ray tasks."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from shards.manifest import load_manifest
from shards.reader import ShardLoader
from shards.segment_pass import read_samples
from shards.segmenter import UNet, load_segmenter

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "tiny.yaml")
CXAS7 = ["left_lung", "right_lung", "heart", "mediastinum", "diaphragm", "trachea", "spine"]


@pytest.fixture(scope="module")
def unet_dir(tmp_path_factory) -> str:
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("seg") / "unet")
    UNet(1, len(CXAS7), width=4, depth=2).save_pretrained(path, CXAS7, input_size=32)
    return path


def _collect(manifest, split: str) -> list[dict]:
    loader = ShardLoader(manifest, split, rank=0, world_size=1, batch_size=1, seed=0, num_workers=0,
                         shuffle_buffer=1, builder=lambda s: {"key": s.key, "masks": s.masks,
                                                             "channels": s.mask_channels, "view": s.images[0]},
                         verify="checksum", max_skip_fraction=0.0, mode="eval")
    return [b for b in loader]


@pytest.mark.slow
def test_masks_pass_replaces_drawn_masks(shards, unet_dir, tmp_path):
    out = tmp_path / "masked"
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "shards", "masks", TINY, f"data.shards_dir={shards}",
                           f"data.masks.path={unet_dir}", f"--out={out}", "data.masks.progress=false",
                           f"cluster.ray_temp_dir=/tmp/rr-ds-m{id(out) % 1000}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    src, new = load_manifest(shards), load_manifest(out)
    assert new.fingerprint != src.fingerprint and new.splits == src.splits
    prod = new.extra["masks_producer"]
    assert prod["channels"] == CXAS7 and prod["backend"] == "hf_dir" and new.preprocess["masks"] == prod
    assert new.extra["source_fingerprint"] == src.fingerprint
    assert new.extra["mask_bytes"]["mean_per_study"] < 10_000

    segmenter = load_segmenter("hf_dir", unet_dir, [], 0)
    batches = _collect(new, "validate")
    assert len(batches) == src.splits["validate"]
    for b in batches[:4]:
        masks, view = b["masks"][0], b["view"][0].numpy()
        assert b["channels"][0] == CXAS7 and masks.shape == (len(CXAS7), *view.shape[:2])
        expected = segmenter(view) >= 0.5  # what the pass must have stored for this study
        assert np.array_equal(masks.numpy(), expected)
    old = read_samples(str(src.path_of(src.shards[0])))
    fresh = read_samples(str(new.path_of(new.shards[0])))
    assert list(old) == list(fresh)  # same keys, same order
    key = next(iter(old))
    assert json.loads(old[key]["json"])["masks"]["channels"] != CXAS7  # the demo's drawn masks were replaced
    assert old[key]["view0.png"] == fresh[key]["view0.png"]


def test_torchscript_backend_matches_the_directory_model(unet_dir, tmp_path):
    model = UNet.from_pretrained(unet_dir)[0]
    script = tmp_path / "unet.pt"
    torch.jit.save(torch.jit.trace(model, torch.rand(1, 1, 32, 32)), str(script))
    view = (np.random.default_rng(0).random((40, 36)) * 255).astype(np.uint8)
    a = load_segmenter("hf_dir", unet_dir, [], 0)(view)
    b = load_segmenter("torchscript", str(script), CXAS7, 32)(view)
    assert a.shape == (7, 40, 36) and np.allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="differ from the model"):
        load_segmenter("hf_dir", unet_dir, CXAS7[::-1], 0)
