"""A PadChest fixture (Spanish reports, 8/16-bit PNGs, its own label set) trains the base family for a few steps."""
from __future__ import annotations

import json
import math

import pytest

from configs.parallel import SerialPool
from shards.config import BuildConfig, DataConfig, SourceConfig
from tests.fixture_trees_other import make_padchest
from shards.manifest import iter_json_records
from shards.writer import build_from_config
from tests.trainkit import result, step_losses, torchrun


@pytest.mark.slow
def test_padchest_fixture_trains_base_family(tmp_path):
    root = make_padchest(tmp_path / "padchest", extra=36, size=72)
    args = {"root": str(root), "known_unreadable": "known_unreadable.txt"}
    data = DataConfig(source=SourceConfig("padchest", args),
                      build=BuildConfig(image_size=64, samples_per_shard=8, progress=False))
    manifest = build_from_config(data, seed=0, out_dir=str(tmp_path / "shards"), pool=SerialPool())
    train = list(iter_json_records(manifest, "train"))
    assert len(train) >= 24 and all(r["label_set"] == "padchest" for r in train)
    assert any("cardiomegalia" in r["report"]["text"] for r in train)

    out = tmp_path / "run"
    torchrun(1, [f"data.shards_dir={tmp_path / 'shards'}", "data.source.adapter=padchest",
                 f"data.source.args.root={root}", f"output_dir={out}", "checkpoint.every_steps=100"])
    losses = step_losses(out)
    assert sorted(losses) == list(range(1, 9)) and all(math.isfinite(v) for v in losses.values())
    assert result(out)["step"] == 8
    tokenizer = json.loads((out / "tokenizer" / "tokenizer.json").read_text())
    assert any("ó" in tok or "í" in tok for tok in tokenizer["model"]["vocab"])  # trained on the Spanish reports
