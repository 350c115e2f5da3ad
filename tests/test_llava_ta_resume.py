"""LLaVA-TA exact resume: a run restarted from a checkpoint in the middle of stage 2 (mid-epoch, topic rows
packed as the demo packs them) trains on the same topic rows, in the same order, with the same per-step
losses as the uninterrupted run."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from configs.parallel import SerialPool
from shards.passes.topics.config import TopicsConfig
from shards.manifest import load_manifest
from tests.trainkit import step_losses, torchrun
from shards.passes.topics.annotate import annotate_topics

STAGES = ("train.stages=[{name: proj, tuning: projector, steps: 2, lr: 0.002, target: topics}, "
          "{name: lora, tuning: lora, steps: 4, lr: 0.001, target: topics}]")


def _rows(output_dir: Path, rank: int) -> dict[int, tuple]:
    """step -> (study keys, topic rows) of one rank (a step logged again after the restart keeps the last)."""
    out = {}
    for line in (output_dir / f"batch_rows.rank{rank}.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out[rec["step"]] = (rec["keys"], rec["topics"])
    return out


@pytest.mark.slow
def test_llava_ta_resumes_mid_epoch_inside_stage_two_with_the_same_topic_rows_and_losses(shards, tmp_path):
    data = tmp_path / "shards"
    shutil.copytree(shards, data)
    annotate_topics(str(data), TopicsConfig(), pool=SerialPool())
    common = [f"data.shards_dir={data}", "model.family=llava_ta", "train.packing.enabled=true", "train.packing.max_len=256",
              "model.options={selection: predicted}",
              "train.train_vision=false", STAGES, "train.lora.r=4", "checkpoint.every_steps=2",
              "checkpoint.keep_last=4", "logging.batch_rows=true"]
    full = tmp_path / "full"
    torchrun(2, common + [f"output_dir={full}"])
    meta = json.loads((full / "checkpoints" / "step_0000004" / "meta.json").read_text())
    assert meta["stage_name"] == "lora" and meta["tuning"] == "lora"  # step 4 lies inside stage 2
    first = _rows(full, 0)
    assert all(len(first[s][1]) > len(first[s][0]) for s in first)  # studies fan out into topic rows
    seen = {k for s in first for k in first[s][0]}
    train = sum(i.num_samples for i in load_manifest(str(data)).shards if i.split == "train")
    assert 4 < len(seen) < train / 2  # rank 0 has not finished its half of the epoch: the resume is mid-epoch
    out = tmp_path / "resumed"
    torchrun(2, common + [f"output_dir={out}", f"checkpoint.resume={full / 'checkpoints' / 'step_0000004'}"])
    a, b = step_losses(full), step_losses(out)
    assert sorted(b) == [5, 6] and [b[s] for s in b] == [a[s] for s in b], (a, b)
    for rank in (0, 1):
        whole, resumed = _rows(full, rank), _rows(out, rank)
        assert sorted(resumed) == [5, 6] and all(resumed[s] == whole[s] for s in resumed), rank
