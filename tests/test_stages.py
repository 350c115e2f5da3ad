"""Multi-stage runs: stages run as one job, checkpoints record the stage, resume lands inside it."""
from __future__ import annotations

import json

import pytest

from tests.trainkit import step_losses, torchrun

STAGES = "train.stages=[{name: proj, tuning: projector, steps: 4, lr: 0.002}, {name: lora, tuning: lora, steps: 4}]"


@pytest.mark.slow
def test_two_stage_run_resumes_bit_exactly_inside_stage_two(shards, tmp_path):
    common = [f"data.shards_dir={shards}", "train.train_vision=false", STAGES, "checkpoint.every_steps=2",
              "checkpoint.keep_last=4", "train.lora.r=4"]
    full = tmp_path / "full"
    torchrun(2, common + [f"output_dir={full}"])
    metas = {s: json.loads((full / "checkpoints" / f"step_{s:07d}" / "meta.json").read_text()) for s in (2, 4, 6, 8)}
    assert [metas[s]["stage_name"] for s in (2, 4, 6, 8)] == ["proj", "proj", "lora", "lora"]
    assert [metas[s]["tuning"] for s in (4, 6)] == ["projector", "lora"]
    # inside stage 2, and at the stage boundary (a stage-1 checkpoint the run must carry into stage 2)
    for start in (6, 4):
        out = tmp_path / f"from{start}"
        torchrun(2, common + [f"output_dir={out}", f"checkpoint.resume={full / 'checkpoints' / f'step_{start:07d}'}"])
        a, b = step_losses(full), step_losses(out)
        assert sorted(b) == list(range(start + 1, 9))
        assert [b[s] for s in b] == [a[s] for s in b], (start, a, b)
