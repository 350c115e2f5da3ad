"""Checkpoint components (trainer/stateful.py) round-trip through CheckpointManager; older checkpoints resume."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from configs.atomic import atomic_write_text
from trainer.checkpoint import CheckpointManager, step_name
from trainer.config import load_config
from trainer.loop import LoopState
from trainer.safe_load import write_complete
from trainer.stages import StageCursor
from trainer.stateful import RNGStreams, Stateful, WandbRun

STAGES = "train.stages=[{name: a, tuning: projector, steps: 3}, {name: b, tuning: full, steps: 5}]"


class Counter:
    """A per-rank component holding JSON and a tensor."""

    def __init__(self, n: int = 0):
        self.n, self.t = n, torch.arange(3) * n

    def state_dict(self):
        return {"n": self.n, "weights": self.t.clone()}

    def load_state_dict(self, state):
        self.n, self.t = state["n"], state["weights"]


def _shards(directory: str, tag: str) -> None:
    (Path(directory) / tag).mkdir(parents=True)
    (Path(directory) / tag / "model.bin").write_bytes(b"x")


def _components(train, seed=1, rank=0):
    return {"stage": (StageCursor(train), "run"), "loop": (LoopState(), "run"), "wandb": (WandbRun("driver-id"), "run"),
            "reader": (Counter(), "rank"), "rng": (RNGStreams(seed, rank), "rank")}


def _manager(root, comps, world_size=1, rank=0) -> CheckpointManager:
    ck = CheckpointManager(root, rank=rank, world_size=world_size, keep_last=2)
    for name, (c, scope) in comps.items():
        ck.register(name, c, scope=scope)
    return ck


def test_registered_components_round_trip_through_a_save_and_resume(tmp_path):
    train = load_config(None, [STAGES]).train
    comps = _components(train)
    assert all(isinstance(c, Stateful) for c, _ in comps.values())
    comps["stage"][0].index = 1
    comps["loop"][0].step, comps["loop"][0].skipped = 4, 3
    comps["wandb"][0].id = "w-first"
    comps["reader"][0].__init__(7)
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    _manager(tmp_path, comps).save(4, write_shards=_shards, meta={"tuning": "full"})
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))

    ckpt = tmp_path / step_name(4)
    meta = json.loads((ckpt / "meta.json").read_text())
    # the keys checkpoints had before the components existed
    assert {k: meta[k] for k in ("global_step", "stage", "stage_name", "skipped_samples", "wandb_id", "tuning")} == \
        {"global_step": 4, "stage": 1, "stage_name": "b", "skipped_samples": 3, "wandb_id": "w-first", "tuning": "full"}
    client = json.loads((ckpt / "client" / "rank_00000.json").read_text())
    assert client["step"] == 4 and client["reader"] == {"n": 7} and set(client["rng"]) == {"python", "numpy"}

    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    fresh = _components(train)
    ck = _manager(tmp_path, fresh)
    point = ck.resolve("auto")
    ck.restore(point, ["stage"])
    assert fresh["stage"][0].index == 1 and fresh["loop"][0].step == 0  # only what was named
    ck.restore(point, skip=("stage",))
    assert (fresh["loop"][0].step, fresh["loop"][0].skipped, fresh["wandb"][0].id) == (4, 3, "w-first")
    assert fresh["reader"][0].n == 7 and torch.equal(fresh["reader"][0].t, torch.arange(3) * 7)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


def test_another_world_size_reads_rank_0_and_reseeds_the_rng(tmp_path):
    train = load_config(None, []).train
    comps = _components(train)
    comps["reader"][0].__init__(2)
    _manager(tmp_path, comps).save(6, write_shards=_shards)
    point = CheckpointManager(tmp_path, rank=0, world_size=1, keep_last=2).resolve("auto")
    for rank in (0, 1):  # as two ranks of a 2-rank run would (the file of rank 0 is the only one there)
        fresh = _components(train, seed=3, rank=rank)
        ck = _manager(tmp_path, fresh, world_size=2, rank=rank)
        random.seed(123)
        ck.restore(point)
        assert fresh["reader"][0].n == 2
        got = random.random()
        random.seed(3 * 1000 + 6 * 7 + rank)
        assert got == random.random()  # seeded anew for this rank and step, not restored


def test_names_and_meta_keys_cannot_clash(tmp_path):
    ck = CheckpointManager(tmp_path, rank=0, world_size=1, keep_last=1)
    ck.register("a", WandbRun("x"), scope="run")
    with pytest.raises(ValueError, match="registered already"):
        ck.register("a", Counter())
    with pytest.raises(ValueError, match="reserved"):
        ck.register("step", Counter())
    ck.register("b", WandbRun("y"), scope="run")  # the same meta key twice
    with pytest.raises(ValueError, match="wandb_id"):
        ck.save(1, write_shards=_shards)


def _old_rng_state():
    """What the checkpoint code before trainer/stateful.py wrote for a rank's RNG (copied from it)."""
    py = random.getstate()
    np_state = np.random.get_state()
    meta = {"python": [py[0], list(py[1]), py[2]],
            "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])]}
    return meta, {"torch": torch.get_rng_state()}


def test_a_checkpoint_in_the_layout_before_the_components_resumes(tmp_path):
    """Client json {reader, step, rng} without a tensor index; meta with stage, skipped_samples, wandb_id."""
    train = load_config(None, [STAGES]).train
    name = step_name(5)
    ckpt = tmp_path / name
    _shards(str(ckpt), "ds")
    (ckpt / "client").mkdir()
    random.seed(8), np.random.seed(8), torch.manual_seed(8)
    rng_meta, rng_tensors = _old_rng_state()
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    atomic_write_text(ckpt / "client" / "rank_00000.json",
                      json.dumps({"reader": {"n": 9, "weights": None}, "step": 5, "rng": rng_meta}))
    save_file(rng_tensors, str(ckpt / "client" / "rank_00000.rng.safetensors"))
    atomic_write_text(ckpt / "meta.json", json.dumps({
        "zero_stage": 2, "tuning": "full", "wandb_id": "w-old", "stage": 1, "stage_name": "b",
        "skipped_samples": 2, "global_step": 5, "world_size": 1}))
    write_complete(ckpt, name, atomic_write_text)

    class Reader(Counter):
        def load_state_dict(self, state):
            assert set(state) == {"n", "weights"}, state  # no RNG tensors handed to it
            self.n = state["n"]

    random.seed(0)
    comps = {**_components(train), "reader": (Reader(), "rank")}
    ck = _manager(tmp_path, comps)
    ck.restore(ck.resolve("auto"))
    assert (comps["stage"][0].index, comps["loop"][0].step, comps["loop"][0].skipped) == (1, 5, 2)
    assert comps["wandb"][0].id == "w-old" and comps["reader"][0].n == 9
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected

    # older still: no stage recorded, the step says which; no W&B id, the driver's stays
    cursor, run = StageCursor(train), WandbRun("driver-id")
    cursor.load_state_dict({"global_step": 4}), run.load_state_dict({"global_step": 4})
    assert cursor.index == 1 and run.id == "driver-id"
    cursor.load_state_dict({"global_step": 3})
    assert cursor.index == 0
