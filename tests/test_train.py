"""The main job: exact resume, preemption, worker death, crash mid-save, world-size change, export."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.trainkit import ROOT, TINY, result, rrg, step_losses, torchrun, wait_for_step


def test_invalid_config_fails_fast_and_names_the_key(tmp_path):
    cases = {
        "train.zero_stage=5": "train.zero_stage",
        "train.no_such_key=1": "train.no_such_key",
        f"model.lm.path={tmp_path / 'missing-model'}": "model.lm.path",
        "data.loader_workers=-1": "data.loader_workers",
    }
    for override, key in cases.items():
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-m", "launcher.cli", "train", TINY, override,
                               f"output_dir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True, text=True, timeout=60)
        elapsed = time.time() - t0
        assert proc.returncode == 2, proc.stderr
        assert f"'{key}'" in proc.stderr, proc.stderr
        assert elapsed < 10, f"{override}: took {elapsed:.1f}s"
        assert not (tmp_path / "run").exists(), "a run directory was created before validation"


@pytest.mark.slow
@pytest.mark.parametrize("stage,tuning", [(2, "full"), (3, "full"), (2, "lora"), (3, "lora")])
def test_resume_in_new_process_is_bit_identical(shards, tmp_path, stage, tuning):
    common = [f"data.shards_dir={shards}", f"train.zero_stage={stage}", f"train.tuning={tuning}",
              f"train.train_vision={'true' if tuning == 'full' else 'false'}"]
    torchrun(2, common + [f"output_dir={tmp_path / 'full'}"])
    ckpt = tmp_path / "full" / "checkpoints" / "step_0000004"
    assert (ckpt / "COMPLETE").is_file()
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["tuning"] == tuning and meta["zero_stage"] == stage and meta["world_size"] == 2
    torchrun(2, common + [f"output_dir={tmp_path / 'resumed'}", f"checkpoint.resume={ckpt}"])
    full, resumed = step_losses(tmp_path / "full"), step_losses(tmp_path / "resumed")
    assert sorted(resumed) == [5, 6, 7, 8]
    assert [resumed[s] for s in range(5, 9)] == [full[s] for s in range(5, 9)]
    assert full[8] < full[1], "loss did not fall"


@pytest.mark.slow
@pytest.mark.parametrize("before,after", [(2, 1), (1, 2)])
def test_resume_with_another_world_size(shards, tmp_path, before, after):
    # same global batch: 2 ranks x 4, or 1 rank x 4 x 2 accumulation steps
    accum = {1: 2, 2: 1}
    base = [f"data.shards_dir={shards}", "train.zero_stage=2"]
    torchrun(before, base + [f"train.grad_accum={accum[before]}", f"output_dir={tmp_path / 'a'}"])
    ckpt = tmp_path / "a" / "checkpoints" / "step_0000004"
    torchrun(after, base + [f"train.grad_accum={accum[after]}", f"output_dir={tmp_path / 'b'}",
                            f"checkpoint.resume={ckpt}"])
    a, b = step_losses(tmp_path / "a"), step_losses(tmp_path / "b")
    assert sorted(b) == [5, 6, 7, 8]
    assert (ckpt / "universal" / "COMPLETE").is_file(), "rrg did not convert to a universal checkpoint"
    # same weights and optimizer state, re-split (not repeated) data: the curve continues where it was
    for s in range(5, 9):
        assert abs(b[s] - a[s]) < 0.25 * a[s], (s, a[s], b[s])
    assert result(tmp_path / "b")["step"] == 8


@pytest.mark.slow
def test_lora_zero3_adapter_loads_in_plain_peft(shards, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora3"
    torchrun(2, [f"data.shards_dir={shards}", "train.zero_stage=3", "train.tuning=lora", "train.train_vision=false",
                 "checkpoint.export=adapter", f"output_dir={out}"])
    export = out / "export"
    assert (export / "lm_adapter" / "adapter_config.json").is_file()
    res = result(out)
    from trainer.config import load_config
    from modeling.family import build_family
    from shards.reader import make_loader
    from trainer.loop import to_device

    cfg = load_config(TINY, [f"data.shards_dir={shards}"])
    family = build_family(cfg.model)
    tok = family.tokenizer(None, save_dir=str(export / "tokenizer"))
    model_cls = type(family.build_model(tok))
    model = model_cls.from_pretrained(str(export))
    # swap the LM for one built by plain transformers + peft from the exported files
    plain_lm = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(export / "lm")),
                                         str(export / "lm_adapter"))
    model.lm = plain_lm.merge_and_unload()
    loader = make_loader(cfg.data, cfg.data.eval_split, rank=0, world_size=2, batch_size=cfg.train.micro_batch_size,
                         seed=cfg.seed, builder=family.sample_builder(tok, "train"), collate=family.collate(tok),
                         mode="eval")
    model.eval()
    with torch.no_grad():
        loss = float(model(**to_device(next(iter(loader)), torch.device("cpu"), torch.float32)).loss)
    assert abs(loss - res["final_eval_loss"]) < 1e-5, (loss, res["final_eval_loss"])
